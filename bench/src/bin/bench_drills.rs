//! The driver of `make bench-drills` (bench/drills.sh); not part of CI.
//!
//! N ContractDrills in a row (20 by default) against real Envoys fed over xDS by the operator, as the
//! first drill test of `e2e/tests/drills.rs` sets them up: Service `pay` with one endpoint in gz (gz-1)
//! and one in sz (sz-1), contract `pay` failing over gz -> sz with retries (3, backoff 10-50ms) and a
//! circuit breaker (3 errors in a row, 2s ejection), and one (or more) Envoy in gz with continuous
//! background traffic through it (one request every 100ms per proxy by default). Each drill is a new
//! ContractDrill `{region: gz, abort: {httpStatus: 503, percent: 100}}` for `--duration` that promises
//! `expect.failoverWithin` (`--promise`, 1800ms by default). The switchover is the operator's own, from the
//! proxies' access logs (`status.switchover`: from the first try that met the fault to the end of the first
//! try answered by sz after it, on the slowest proxy's clock). After each verdict the driver waits until
//! every proxy's traffic is back on gz-1 before the next drill.
//!
//! Written: `<results>/drills.json` (every drill's raw status and the driver's own timings, the summary,
//! the versions and the machine), rewritten after every drill, and `<results>/drills-<stamp>.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use channel_contracts_bench::stats::{Stats, stats};
use clap::Parser;
use e2e::kubectl;
use e2e::traffic::{Seen, Traffic};
use e2e::xds::{ProxySpec, XdsBed, XdsOperator};
use serde_json::{Value, json};

const PORT: u16 = 18080;

/// The contract under drill (the first test of e2e/tests/drills.rs, with the same short ejection).
const CONTRACT_SPEC: &str = "  service: pay\n  port: 18080\n  sla: {maxLatency: 3s}\n  retry:\n    maxRetries: 3\n    backoff: {baseInterval: 10ms, maxInterval: 50ms}\n  circuitBreaker: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}\n  failover: {regions: [gz, sz]}\n";

/// What the seed's report said, for comparison.
const SEED: &str = "92 % within 1.8 s";

#[derive(Debug, Parser)]
#[command(name = "bench_drills", about = "The driver of make bench-drills")]
struct Args {
    /// Drills in a row.
    #[arg(long, env = "CSP_BENCH_DRILLS", default_value_t = 20)]
    drills: usize,
    /// The promise (`spec.expect.failoverWithin`).
    #[arg(long, env = "CSP_BENCH_PROMISE", default_value = "1800ms")]
    promise: String,
    /// Each drill's `spec.duration`.
    #[arg(long, env = "CSP_BENCH_DRILL_DURATION", default_value = "10s")]
    duration: String,
    /// Envoys in gz (each with its own background traffic).
    #[arg(long, env = "CSP_BENCH_PROXIES", default_value_t = 1)]
    proxies: usize,
    /// One background request per proxy every this many milliseconds.
    #[arg(long, env = "CSP_BENCH_TRAFFIC_MS", default_value_t = 100)]
    traffic_ms: u64,
    /// How long a drill may take to get its verdict after its duration (seconds).
    #[arg(long, default_value_t = 60)]
    verdict_timeout: u64,
    /// Where drills.json and drills-<stamp>.md go.
    #[arg(long, default_value = "bench/results")]
    results: PathBuf,
    /// The results' stamp (`YYYY-MM-DD-HHMMSS`); default: now (UTC).
    #[arg(long)]
    stamp: Option<String>,
    /// The commit measured (for the report).
    #[arg(long, default_value = "?")]
    commit: String,
}

fn log(msg: impl AsRef<str>) {
    channel_contracts_bench::log("bench_drills", msg);
}

fn acked(c: &Value, n: usize) -> bool {
    let p = &c["status"]["proxies"];
    p["selected"] == n && p["acked"] == n && c["status"]["observedGeneration"] == c["metadata"]["generation"]
}

fn config_version(c: &Value) -> &str {
    c["status"]["configVersion"].as_str().unwrap_or_default()
}

fn get(kind: &str, name: &str, ns: &str) -> Option<Value> {
    let r = kubectl(&["get", kind, name, "-n", ns, "-o", "json"], None);
    if !r.success {
        return None;
    }
    serde_json::from_str(&r.stdout).ok()
}

/// Polls `check` every `every` until it gives `Some` or `timeout` passes.
fn poll<T>(timeout: Duration, every: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(every);
    }
}

fn millis(d: &str) -> Option<f64> {
    crds::duration::parse(d).ok().map(|d| d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// One drill: created, judged, and the traffic back on gz-1.
fn run_drill(
    args: &Args,
    bed: &XdsBed,
    traffic: &[Traffic],
    epoch: Instant,
    index: usize,
    plain: &str,
) -> Result<Value> {
    let ns = &bed.ns.name;
    let name = format!("drill-{:02}", index + 1);
    let n = traffic.len();
    // Before: every proxy acked the plain version and sends to gz-1.
    let ready = poll(Duration::from_secs(60), Duration::from_millis(250), || {
        let c = get("channelcontract", "pay", ns)?;
        let on_gz = traffic.iter().all(|t| t.settled_on(epoch, "gz-1", 5));
        (acked(&c, n) && config_version(&c) == plain && on_gz).then_some(())
    });
    if ready.is_none() {
        bail!("before {name}: the proxies did not come back to the plain version on gz-1 within 60s");
    }
    let yaml = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractDrill\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  contract: pay\n  fault: {{region: gz, abort: {{httpStatus: 503, percent: 100}}}}\n  duration: {}\n  expect: {{failoverWithin: {}}}\n",
        args.duration, args.promise
    );
    let created = epoch.elapsed();
    let started = Instant::now();
    kubectl(&["create", "-f", "-"], Some(&yaml)).ok();

    // Until the verdict: when every proxy acked the fault's version, then the drill's phase.
    let duration = crds::duration::parse(&args.duration).map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    let mut fault_acked: Option<Duration> = None;
    let mut fault_removed: Option<Duration> = None;
    let judged = poll(duration + Duration::from_secs(args.verdict_timeout), Duration::from_millis(250), || {
        if let Some(c) = get("channelcontract", "pay", ns)
            && acked(&c, n)
        {
            if fault_acked.is_none() && config_version(&c).contains("+drill.") {
                fault_acked = Some(started.elapsed());
            } else if fault_acked.is_some() && fault_removed.is_none() && config_version(&c) == plain {
                fault_removed = Some(started.elapsed());
            }
        }
        let d = get("contractdrill", &name, ns)?;
        matches!(d["status"]["phase"].as_str(), Some("Passed" | "Failed" | "Aborted")).then_some(d)
    });
    let verdict_after = started.elapsed();
    let judged_at = epoch.elapsed();

    // After: the plain version back on every proxy, and gz-1 serving again once its ejection is over.
    let back = poll(Duration::from_secs(90), Duration::from_millis(250), || {
        let c = get("channelcontract", "pay", ns)?;
        let on_gz = traffic.iter().all(|t| t.settled_on(epoch + judged_at, "gz-1", 5));
        (acked(&c, n) && config_version(&c) == plain && on_gz).then_some(())
    });
    let back_after = back.map(|()| epoch.elapsed() - judged_at);

    // What the clients saw from the drill's creation to its verdict.
    let clients: Vec<Value> = traffic
        .iter()
        .map(|t| {
            let seen: Vec<Seen> = t.since(epoch + created).into_iter().filter(|s| s.at <= epoch + judged_at).collect();
            let first_sz = seen
                .iter()
                .find(|s| s.status == 200 && s.backend == "sz-1")
                .map(|s| secs(s.at.duration_since(epoch + created)));
            let mut by: BTreeMap<String, u64> = BTreeMap::new();
            for s in &seen {
                *by.entry(format!("{} {}", s.status, if s.backend.is_empty() { "-" } else { &s.backend }))
                    .or_default() += 1;
            }
            // Every reply that was not a 200: when (seconds after the drill's creation, and the time of
            // day in UTC as the proxies log it), what.
            let errors: Vec<Value> = seen
                .iter()
                .filter(|s| s.status != 200)
                .map(|s| {
                    json!({
                        "after_create_s": secs(s.at.duration_since(epoch + created)),
                        "utc": utc(s.unix_ms),
                        "status": s.status,
                        "backend": s.backend,
                    })
                })
                .collect();
            json!({
                "proxy": t.proxy,
                "requests": seen.len(),
                "failed": errors.len(),
                "errors": errors,
                "created_to_first_sz_s": first_sz,
                "by_status_backend": by,
            })
        })
        .collect();

    let Some(drill) = judged else {
        // No verdict: take the drill away (its fault with it) and say so.
        kubectl(&["delete", "contractdrill", &name, "-n", ns, "--wait=false"], None).ok();
        let last = get("contractdrill", &name, ns).map(|d| d["status"].clone()).unwrap_or(Value::Null);
        return Ok(json!({
            "name": name,
            "phase": "NoVerdict",
            "switchover": null,
            "switchover_ms": null,
            "fault_acked_s": fault_acked.map(secs),
            "fault_removed_s": fault_removed.map(secs),
            "verdict_after_s": secs(verdict_after),
            "back_on_gz_after_verdict_s": back_after.map(secs),
            "clients": clients,
            "status": last,
        }));
    };
    let status = &drill["status"];
    let switchover = status["switchover"].as_str().map(str::to_owned);
    let succeeded = status["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Succeeded");
    Ok(json!({
        "name": name,
        "phase": status["phase"],
        "switchover": switchover,
        "switchover_ms": switchover.as_deref().and_then(millis),
        "runs": status["runs"],
        "reason": succeeded.map(|c| c["reason"].clone()),
        "message": succeeded.map(|c| c["message"].clone()),
        "failed_requests": status["failedRequests"],
        "fault_acked_s": fault_acked.map(secs),
        "fault_removed_s": fault_removed.map(secs),
        "verdict_after_s": secs(verdict_after),
        "back_on_gz_after_verdict_s": back_after.map(secs),
        "clients": clients,
        "status": status,
    }))
}

/// `HH:MM:SS.mmm` (UTC) of Unix milliseconds.
fn utc(unix_ms: u128) -> String {
    let (s, ms) = (unix_ms / 1000, unix_ms % 1000);
    format!("{:02}:{:02}:{:02}.{ms:03}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

fn envoy_version() -> String {
    let out = std::process::Command::new(e2e::tool("envoy")).arg("--version").output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    // `envoy  version: <commit>/1.40.0/Clean/RELEASE/BoringSSL`
    let full = text.split("version: ").nth(1).and_then(|v| v.split_whitespace().next()).unwrap_or("?");
    full.split('/').nth(1).map_or_else(|| full.to_owned(), |release| format!("{release} ({full})"))
}

fn kubernetes_version() -> String {
    std::fs::read_to_string(e2e::repo_root().join("e2e/tools/versions.env"))
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("KUBERNETES_VERSION=")).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| "?".to_owned())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_owned()))
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// The operator's log (the harness puts it in e2e/.run/tests/<name>-<pid>-<n>/operator.log).
fn operator_log(name: &str) -> Option<PathBuf> {
    let prefix = format!("{name}-{}-", std::process::id());
    let dir = e2e::repo_root().join("e2e/.run/tests");
    std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|f| f.to_string_lossy().starts_with(&prefix)))
        .map(|p| p.join("operator.log"))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(e2e::repo_root()).unwrap_or(path).to_string_lossy().into_owned()
}

fn summary(args: &Args, drills: &[Value]) -> Value {
    let promise_ms = millis(&args.promise).unwrap_or(f64::NAN);
    let switchovers: Vec<f64> = drills.iter().filter_map(|d| d["switchover_ms"].as_f64()).collect();
    let count = |phase: &str| drills.iter().filter(|d| d["phase"] == phase).count();
    let within = switchovers.iter().filter(|s| **s <= promise_ms).count();
    let stats: Stats = stats(&switchovers);
    let acked: Vec<f64> = drills.iter().filter_map(|d| d["fault_acked_s"].as_f64()).collect();
    let first_sz: Vec<f64> = drills
        .iter()
        .flat_map(|d| d["clients"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["created_to_first_sz_s"].as_f64())
        .collect();
    let client_failed: u64 = drills
        .iter()
        .flat_map(|d| d["clients"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["failed"].as_u64())
        .sum();
    let client_requests: u64 = drills
        .iter()
        .flat_map(|d| d["clients"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["requests"].as_u64())
        .sum();
    json!({
        "drills": drills.len(),
        "passed": count("Passed"),
        "failed": count("Failed"),
        "aborted": count("Aborted"),
        "no_verdict": count("NoVerdict"),
        "with_switchover": switchovers.len(),
        "within_promise": within,
        "within_promise_percent": if drills.is_empty() { f64::NAN } else { 100.0 * within as f64 / drills.len() as f64 },
        "promise": args.promise,
        "promise_ms": promise_ms,
        "switchover_ms": stats,
        "fault_acked_s": stats_or_null(&acked),
        "created_to_first_sz_s": stats_or_null(&first_sz),
        "client_requests_during_drills": client_requests,
        "client_failed_during_drills": client_failed,
    })
}

fn stats_or_null(v: &[f64]) -> Value {
    if v.is_empty() { Value::Null } else { json!(stats(v)) }
}

fn ms(v: &Value) -> String {
    v.as_f64().filter(|f| f.is_finite()).map_or("–".to_owned(), |f| format!("{f:.0} ms"))
}

fn markdown(report: &Value) -> String {
    let s = &report["summary"];
    let c = &report["config"];
    let m = &report["machine"];
    let v = &report["versions"];
    let sw = &s["switchover_ms"];
    let mut md = format!("# ContractDrill switchover benchmark — {}\n\n", report["stamp"].as_str().unwrap_or_default());
    md += &format!(
        "Commit {}; {} cores ({}); load average {} at the start, {} at the end; kube-apiserver {} with etcd on loopback (a control plane of its own); Envoy {}; the operator as built by `cargo build --bins` (debug), as the chart's ServiceAccount. The machine is shared: other builds and tests may run at the same time.\n\n",
        report["commit"].as_str().unwrap_or("?"),
        m["nproc"],
        m["cpu"].as_str().unwrap_or("?"),
        m["load_average_start"].as_str().unwrap_or("?"),
        m["load_average_end"].as_str().unwrap_or("?"),
        v["kubernetes"].as_str().unwrap_or("?"),
        v["envoy"].as_str().unwrap_or("?"),
    );
    md += "| drills | passed | failed / aborted / no verdict | within the promise | switchover p50 | p99 | max | promise |\n";
    md += "|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    md += &format!(
        "| {} | {} | {} / {} / {} | **{:.0} %** ({} of {}) | {} | {} | {} | {} |\n\n",
        s["drills"],
        s["passed"],
        s["failed"],
        s["aborted"],
        s["no_verdict"],
        s["within_promise_percent"].as_f64().unwrap_or(f64::NAN),
        s["within_promise"],
        s["drills"],
        ms(&sw["p50"]),
        ms(&sw["p99"]),
        ms(&sw["max"]),
        c["promise"].as_str().unwrap_or("?"),
    );
    md += &format!("The seed's report: {SEED}.\n\n");
    md += "| drill | phase | switchover | status: fault acked (s after create) | status: fault removed (s after create) | verdict (s after create) | client: create -> first sz-1 reply (s) | client replies not 200 (status at s after create) | back on gz-1 (s after verdict) |\n";
    md += "|---|---|---:|---:|---:|---:|---:|---|---:|\n";
    for d in report["drills"].as_array().into_iter().flatten() {
        let clients = d["clients"].as_array().cloned().unwrap_or_default();
        let first_sz: Vec<String> = clients
            .iter()
            .map(|c| c["created_to_first_sz_s"].as_f64().map_or("–".to_owned(), |f| format!("{f:.2}")))
            .collect();
        let errors: Vec<String> = clients
            .iter()
            .flat_map(|c| c["errors"].as_array().cloned().unwrap_or_default())
            .map(|e| format!("{} at {:.2}", e["status"], e["after_create_s"].as_f64().unwrap_or(f64::NAN)))
            .collect();
        let errors =
            if errors.is_empty() { "0".to_owned() } else { format!("{} ({})", errors.len(), errors.join(", ")) };
        let opt = |v: &Value| v.as_f64().map_or("–".to_owned(), |f| format!("{f:.2}"));
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            d["name"].as_str().unwrap_or_default(),
            d["phase"].as_str().unwrap_or("?"),
            d["switchover"].as_str().unwrap_or("–"),
            opt(&d["fault_acked_s"]),
            opt(&d["fault_removed_s"]),
            opt(&d["verdict_after_s"]),
            first_sz.join(", "),
            errors,
            opt(&d["back_on_gz_after_verdict_s"]),
        );
    }
    md += &format!(
        "\nHow it was measured (`make bench-drills`, bench/drills.sh, bench/src/bin/bench_drills.rs): a control plane of its own; the operator (`--publish xds`, TLS) and {} real Envoy(s) in gz in a network namespace, fed over delta ADS; Service `pay` with gz-1 in gz and sz-1 in sz; contract `pay` with `failover: {{regions: [gz, sz]}}`, retries (3, backoff 10-50 ms) and a circuit breaker (3 errors in a row, interval 1 s, baseEjectionTime 2 s); one background request per proxy every {} ms (curl in the network namespace). {} ContractDrills in a row, each new: fault `{{region: gz, abort: {{httpStatus: 503, percent: 100}}}}`, duration {}, `expect.failoverWithin: {}`. The switchover is the operator's `status.switchover` (from the proxies' own upstream access logs: the first try that met the fault to the end of the first try answered by sz after it, on the slowest proxy); percentiles are nearest-rank over the drills that measured one (below 100 drills p99 is the maximum); \"within the promise\" counts over all drills (a drill without a switchover is not within it). Client replies not 200: the background requests (each with the contract's retries) that still got an error between the drill's creation and its verdict. Between drills the driver waits until the proxies acked the plain version again and the last 5 background replies of every proxy came from gz-1 (after gz-1's ejection). \"Status: fault acked\" / \"fault removed\": when the contract's `status.proxies` said that every proxy acked the fault's version / the plain version again (polled every 250 ms; the status is written after the ACK, so the clients may see sz earlier). Every error's time of day (UTC, as the proxies log it) is in drills.json, to be read next to the proxies' logs.\n\nRaw data: bench/results/drills.json (this run); the operator's log: {}; the proxies' logs: {}.\n",
        c["proxies"],
        c["traffic_every_ms"],
        c["drills"],
        c["duration"].as_str().unwrap_or("?"),
        c["promise"].as_str().unwrap_or("?"),
        report["operator_log"].as_str().unwrap_or("?"),
        report["bed_dir"].as_str().unwrap_or("?"),
    );
    md
}

fn stamp_now() -> String {
    let out = std::process::Command::new("date").arg("+%Y-%m-%d-%H%M%S").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_else(|_| "now".to_owned())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.proxies == 0 || args.proxies > 50 {
        bail!("--proxies must be between 1 and 50");
    }
    millis(&args.promise).context("--promise is no duration")?;
    let stamp = args.stamp.clone().unwrap_or_else(stamp_now);
    std::fs::create_dir_all(&args.results)?;
    let json_out = args.results.join("drills.json");
    let md_out = args.results.join(format!("drills-{stamp}.md"));
    let epoch = Instant::now();
    let load_start = load_average();

    log("starting the operator (xDS over TLS, the chart's ServiceAccount)");
    let operator_name = "bench-drills-operator";
    let operator = XdsOperator::start(operator_name, &e2e::unique("bench-drills"), &[]);
    let operator_log_path = operator_log(operator_name).map(|p| relative(&p)).unwrap_or_else(|| "?".to_owned());
    let op_log = || format!("--- operator log ---\n{}", operator.log_tail());

    log(format!("the bed: backends gz-1 and sz-1, Service and contract pay, {} Envoy(s) in gz", args.proxies));
    let mut bed = XdsBed::new("bench-drills");
    for b in ["gz-1", "sz-1"] {
        bed.start_backend(b);
    }
    bed.service("pay", PORT, &[("gz-1", "gz"), ("sz-1", "sz")]);
    bed.contract(&operator, "pay", CONTRACT_SPEC);
    let names: Vec<String> = (0..args.proxies).map(|i| format!("proxy-gz-{}", i + 1)).collect();
    for (i, name) in names.iter().enumerate() {
        let host = u8::try_from(2 + i)?;
        let admin = 19400 + u16::try_from(i)?;
        bed.start_proxy(&operator, ProxySpec::new(name, "gz", host, admin));
    }
    let c = bed.wait_status("pay", "every proxy acked", Duration::from_secs(90), &op_log, |c| acked(c, args.proxies));
    let plain = config_version(&c).to_owned();
    for name in &names {
        bed.settles_on(name, "pay", PORT, "gz-1", 10, Duration::from_secs(30));
    }
    let traffic: Vec<Traffic> =
        names.iter().map(|p| Traffic::start(&bed, p, "pay", PORT, 1, Duration::from_millis(args.traffic_ms))).collect();
    // A few seconds of healthy traffic first.
    std::thread::sleep(Duration::from_secs(3));

    let mut report = json!({
        "stamp": stamp,
        "commit": args.commit,
        "config": {
            "drills": args.drills,
            "promise": args.promise,
            "duration": args.duration,
            "proxies": args.proxies,
            "traffic_every_ms": args.traffic_ms,
            "fault": {"region": "gz", "abort": {"httpStatus": 503, "percent": 100}},
            "contract_spec": CONTRACT_SPEC,
        },
        "versions": {"envoy": envoy_version(), "kubernetes": kubernetes_version(), "plain_config_version": plain},
        "machine": {"nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "cpu": cpu_model(), "load_average_start": load_start},
        "operator_log": operator_log_path,
        "bed_dir": relative(&bed.dir),
        "seed_report": SEED,
        "complete": false,
        "drills": [],
    });
    let mut drills: Vec<Value> = Vec::new();
    let mut error: Option<String> = None;
    for i in 0..args.drills {
        match run_drill(&args, &bed, &traffic, epoch, i, &plain) {
            Ok(d) => {
                log(format!(
                    "{}: {} switchover {} (fault acked after {}s, verdict after {}s, back on gz-1 {}s after it){}",
                    d["name"].as_str().unwrap_or_default(),
                    d["phase"].as_str().unwrap_or("?"),
                    d["switchover"].as_str().unwrap_or("-"),
                    d["fault_acked_s"],
                    d["verdict_after_s"],
                    d["back_on_gz_after_verdict_s"],
                    d["message"].as_str().map(|m| format!(": {m}")).unwrap_or_default(),
                ));
                drills.push(d);
            }
            Err(e) => {
                log(format!("stopped: {e:#}"));
                error = Some(format!("{e:#}"));
            }
        }
        report["drills"] = json!(drills);
        report["summary"] = summary(&args, &drills);
        report["machine"]["load_average_end"] = json!(load_average());
        report["complete"] = json!(error.is_none() && i + 1 == args.drills);
        report["error"] = json!(error);
        std::fs::write(&json_out, serde_json::to_string_pretty(&report)?)?;
        if error.is_some() {
            break;
        }
    }
    drop(traffic);
    std::fs::write(&md_out, markdown(&report))?;
    print!("{}", markdown(&report));
    log(format!("saved to {} and {}", json_out.display(), md_out.display()));
    drop(bed);
    drop(operator);
    if let Some(e) = error {
        bail!("{e}");
    }
    Ok(())
}
