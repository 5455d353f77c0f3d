//! The driver of `make dashboard-screenshot` (bench/dashboard.sh): the chart's Grafana dashboard
//! (charts/channel-contracts/files/dashboards/channel-contracts.json) drawn with real data, without
//! Grafana (AGPL, not built here).
//!
//! - `run`: produces the data with the e2e harness — an operator serving two contracts over xDS to two
//!   real Envoys, backends, continuous traffic, and a real Prometheus in the bed's network namespace that
//!   scrapes the operator and the Envoys with the chart's recording rules; over about five minutes:
//!   healthy traffic, a slow backend that breaches the SLA, a failover across regions and then to the
//!   fallback channel, and two ContractDrills (one promising a 10ms switchover). Then every panel's
//!   queries (its targets' `expr`, Grafana's variables replaced) run against that Prometheus over the
//!   data window, the raw answers go to a JSON file (bench/results/dashboard.json) and the picture is
//!   drawn from that file.
//! - `render`: draws the SVG again from such a JSON file, nothing run.
//!
//! The drawing follows each panel's gridPos (24 columns), type (timeseries: lines or stacked bars;
//! status-history: a series × time grid coloured by the panel's thresholds or value mappings; stat: the
//! last value, big; table: the merged instant results with the panel's columns and mappings; bargauge:
//! one bar per series), unit, min/max, dashed-line overrides and the dashboard's drill-fault annotation.
//! A panel whose queries return nothing says "No data", as Grafana does.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use e2e::kubectl;
use e2e::observability::{encode, operator_with_prometheus};
use e2e::traffic::Traffic;
use e2e::xds::{ProxySpec, XdsBed};
use serde_json::{Value, json};

const PORT: u16 = 18080;

#[derive(Debug, Parser)]
#[command(name = "dashboard_shot", about = "The chart's Grafana dashboard drawn with real Prometheus data")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Produce real data (operator, Envoys, Prometheus, traffic, failures, drills), query every panel,
    /// write the results and draw them.
    Run {
        /// The dashboard JSON.
        #[arg(long, default_value = "charts/channel-contracts/files/dashboards/channel-contracts.json")]
        dashboard: PathBuf,
        /// Where the raw query results go.
        #[arg(long, default_value = "bench/results/dashboard.json")]
        json_out: PathBuf,
        /// Where the picture goes.
        #[arg(long, default_value = "docs/dashboard.svg")]
        svg_out: PathBuf,
    },
    /// Draw the picture again from a results file.
    Render {
        /// The results of a run.
        #[arg(long, default_value = "bench/results/dashboard.json")]
        json: PathBuf,
        /// Where the picture goes.
        #[arg(long, default_value = "docs/dashboard.svg")]
        svg_out: PathBuf,
    },
}

fn log(msg: impl AsRef<str>) {
    channel_contracts_bench::log("dashboard_shot", msg);
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run { dashboard, json_out, svg_out } => {
            let dashboard: Value = serde_json::from_slice(
                &std::fs::read(&dashboard).with_context(|| format!("read {}", dashboard.display()))?,
            )?;
            let results = produce(&dashboard)?;
            write(&json_out, &serde_json::to_string_pretty(&results)?)?;
            write(&svg_out, &render(&results))?;
            log(format!("wrote {} and {}", json_out.display(), svg_out.display()));
            report_empty(&results);
            Ok(())
        }
        Command::Render { json, svg_out } => {
            let results: Value =
                serde_json::from_slice(&std::fs::read(&json).with_context(|| format!("read {}", json.display()))?)?;
            write(&svg_out, &render(&results))?;
            log(format!("wrote {}", svg_out.display()));
            report_empty(&results);
            Ok(())
        }
    }
}

fn write(path: &std::path::Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

fn report_empty(results: &Value) {
    let empty: Vec<String> = panels_of(results)
        .filter(|p| p["panel"]["type"] != "row" && !has_data(p))
        .map(|p| format!("{:?}", p["panel"]["title"].as_str().unwrap_or_default()))
        .collect();
    if empty.is_empty() {
        log("every panel has data");
    } else {
        log(format!("panels without data (drawn as \"No data\"): {}", empty.join(", ")));
    }
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------------
// Producing the data.
// ---------------------------------------------------------------------------------------------------

/// What a background traffic's clients saw, for the report.
fn summary(t: &Traffic) -> Value {
    let by: BTreeMap<String, u64> =
        t.by_reply().into_iter().map(|((status, backend), n)| (format!("{status} {backend}"), n)).collect();
    json!({"traffic": format!("{} through {}", t.service, t.proxy), "replies": by})
}

fn drill(bed: &XdsBed, name: &str, contract: &str, duration: &str, within: &str) {
    let yaml = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractDrill\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  contract: {contract}\n  fault: {{region: gz, abort: {{httpStatus: 503, percent: 100}}}}\n  duration: {duration}\n  expect: {{failoverWithin: {within}}}\n",
        ns = bed.ns.name
    );
    kubectl(&["apply", "-f", "-"], Some(&yaml)).ok();
}

fn acked(c: &Value, n: i64) -> bool {
    let p = &c["status"]["proxies"];
    p["selected"] == n && p["acked"] == n
}

const PAYMENT_VERIFY: &str = "  service: payment-verify\n  port: 18080\n  sla: {maxLatency: 250ms, objective: 0.99}\n  retry: {strategy: None}\n  circuitBreaker: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 20s, maxEjectionPercent: 100}\n  channels:\n  - {name: primary}\n  - {name: cache, service: verify-cache, selector: cache}\n  failover: {regions: [gz, sz]}\n";
const ORDERS: &str = "  service: orders\n  port: 18080\n  sla: {maxLatency: 250ms, objective: 0.95}\n  retry:\n    maxRetries: 2\n    backoff: {baseInterval: 10ms, maxInterval: 50ms}\n  circuitBreaker: {consecutiveErrors: 10, interval: 1s, baseEjectionTime: 10s, maxEjectionPercent: 100}\n  failover: {regions: [gz, sz]}\n";

/// The scenario, then every panel's queries over its window.
fn produce(dashboard: &Value) -> Result<Value> {
    let mut bed = XdsBed::new("shot");
    let admins = [19401u16, 19402];
    // As operator_with_prometheus() in e2e/tests/drills.rs: Prometheus in the bed's network namespace on
    // 0.0.0.0 (the operator's triggers reach it from the host), scraping the operator on the host's end of
    // the link and the Envoys on the namespace's loopback, with the chart's recording rules.
    let (operator, prometheus) = operator_with_prometheus(&bed, "shot-operator", &admins);
    let prom_url = format!("http://{}:{}", bed.inside_address(), prometheus.port);
    log(format!(
        "Prometheus at {prom_url}, operator admin on :{}, files in {}",
        operator.admin_port,
        bed.dir.display()
    ));
    let oplog = || format!("--- operator log ---\n{}", operator.log_tail());

    for b in ["pv-gz-1", "pv-sz-1", "cache-gz-1", "orders-gz-1", "orders-sz-1"] {
        bed.start_backend(b);
    }
    bed.service("payment-verify", PORT, &[("pv-gz-1", "gz"), ("pv-sz-1", "sz")]);
    bed.service("verify-cache", PORT, &[("cache-gz-1", "gz")]);
    bed.service("orders", PORT, &[("orders-gz-1", "gz"), ("orders-sz-1", "sz")]);
    bed.contract(&operator, "payment-verify", PAYMENT_VERIFY);
    bed.contract(&operator, "orders", ORDERS);
    bed.start_proxy(&operator, ProxySpec::new("proxy-gz", "gz", 2, admins[0]));
    bed.start_proxy(&operator, ProxySpec::new("proxy-sz", "sz", 3, admins[1]));
    for c in ["payment-verify", "orders"] {
        bed.wait_status(c, "2/2 acked", Duration::from_secs(90), &oplog, |c| acked(c, 2));
    }
    bed.settles_on("proxy-gz", "payment-verify", PORT, "pv-gz-1", 5, Duration::from_secs(30));
    bed.settles_on("proxy-gz", "orders", PORT, "orders-gz-1", 5, Duration::from_secs(30));
    log("both contracts acked by both proxies; traffic starts");

    let t0 = Instant::now();
    let t0_unix = now_secs();
    let mut events: Vec<Value> = Vec::new();
    let mut at = |secs: u64, what: &str| {
        let due = Duration::from_secs(secs);
        std::thread::sleep(due.saturating_sub(t0.elapsed()));
        log(format!("t+{secs}s: {what}"));
        events.push(json!({"time": now_secs(), "at_s": secs, "what": what}));
    };
    let traffic = [
        Traffic::start(&bed, "proxy-gz", "payment-verify", PORT, 4, Duration::from_millis(500)),
        Traffic::start(&bed, "proxy-gz", "orders", PORT, 3, Duration::from_millis(500)),
        Traffic::start(&bed, "proxy-sz", "payment-verify", PORT, 2, Duration::from_millis(500)),
        Traffic::start(&bed, "proxy-sz", "orders", PORT, 2, Duration::from_millis(500)),
    ];
    at(0, "healthy traffic: payment-verify and orders through proxy-gz and proxy-sz");
    at(20, "ContractDrill pv-strict-promise: payment-verify, gz aborts 503 for 40s, promise failover within 10ms");
    drill(&bed, "pv-strict-promise", "payment-verify", "40s", "10ms");
    at(60, "orders-gz-1 slows down to 150ms (sla.maxLatency 250ms)");
    bed.backend("orders-gz-1").set_mode("slow 150ms");
    at(100, "orders-gz-1 slows down to 300ms: over sla.maxLatency, the requests time out");
    bed.backend("orders-gz-1").set_mode("slow 300ms");
    at(150, "orders-gz-1 recovers; pv-gz-1 answers 503: payment-verify fails over to sz");
    bed.backend("orders-gz-1").set_mode("ok");
    bed.backend("pv-gz-1").set_mode("status 503");
    at(185, "pv-sz-1 answers 503 too: payment-verify falls back to the cache channel");
    bed.backend("pv-sz-1").set_mode("status 503");
    at(200, "ContractDrill orders-gz-outage: orders, gz aborts 503 for 20s, promise failover within 5s");
    drill(&bed, "orders-gz-outage", "orders", "20s", "5s");
    at(235, "pv-gz-1 and pv-sz-1 recover");
    bed.backend("pv-gz-1").set_mode("ok");
    bed.backend("pv-sz-1").set_mode("ok");
    at(300, "traffic stops");
    let summaries: Vec<Value> = traffic.iter().map(summary).collect();
    drop(traffic);
    // The last access logs reach the operator and the last scrapes and rule evaluations happen.
    std::thread::sleep(Duration::from_secs(5));
    let drills: Vec<Value> = ["pv-strict-promise", "orders-gz-outage"]
        .iter()
        .map(|d| {
            let r = kubectl(&["get", "contractdrill", d, "-n", &bed.ns.name, "-o", "json"], None);
            let v: Value = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
            json!({"drill": d, "phase": v["status"]["phase"], "switchover": v["status"]["switchover"], "message":
                v["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Succeeded").map(|c| c["message"].clone())})
        })
        .collect();
    log(format!("drills: {drills:?}"));
    let end = now_secs().floor();
    let start = (t0_unix - 30.0).floor();

    let client = Client { base: prom_url.clone() };
    let mut results = query_dashboard(&client, dashboard, start, end);
    results["scenario"] = json!({
        "namespace": bed.ns.name,
        "contracts": {"payment-verify": PAYMENT_VERIFY, "orders": ORDERS},
        "proxies": ["proxy-gz (region gz)", "proxy-sz (region sz)"],
        "backends": {"payment-verify": ["pv-gz-1 (gz)", "pv-sz-1 (sz)"], "verify-cache": ["cache-gz-1 (gz)"], "orders": ["orders-gz-1 (gz)", "orders-sz-1 (sz)"]},
        "traffic_start": t0_unix,
        "events": events,
        "traffic": summaries,
        "drills": drills,
    });
    drop(prometheus);
    drop(operator);
    Ok(results)
}

/// Prometheus's HTTP API, from the host (it listens on 0.0.0.0 in the bed's network namespace).
struct Client {
    base: String,
}

impl Client {
    fn get(&self, path: &str) -> Value {
        let (code, body) = e2e::curl(&["-g", &format!("{}{path}", self.base)]);
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if code != 200 || v["status"] != "success" {
            log(format!("query failed ({code}): {path}: {}", body.chars().take(300).collect::<String>()));
        }
        v
    }

    fn range(&self, q: &str, start: f64, end: f64, step: f64) -> Value {
        let v = self.get(&format!("/api/v1/query_range?query={}&start={start}&end={end}&step={step}", encode(q)));
        v["data"]["result"].clone()
    }

    fn instant(&self, q: &str, time: f64) -> Value {
        let v = self.get(&format!("/api/v1/query?query={}&time={time}", encode(q)));
        v["data"]["result"].clone()
    }
}

/// A Grafana duration (`1m`, `30s`, `5m`) in seconds.
fn duration_secs(text: &str) -> Option<f64> {
    crds::duration::parse(text.trim()).ok().map(|d| d.as_secs_f64())
}

/// Grafana's default minimum interval of a Prometheus data source (its "scrape interval" setting).
const DATASOURCE_INTERVAL: f64 = 15.0;

/// Every panel's queries, with the variables as Grafana sets them for "All" and this time range.
fn query_dashboard(client: &Client, dashboard: &Value, start: f64, end: f64) -> Value {
    let range = end - start;
    // $__rate_interval = max($__interval + scrape interval, 4 × scrape interval), with Grafana's default
    // scrape interval setting (15s): 1m at this range.
    let rate_interval = "1m";
    let variables = json!({
        "$cluster": ".*", "$csp_namespace": ".*", "$csp_contract": ".*",
        "$__rate_interval": rate_interval, "$__range": format!("{}s", range as u64),
        "$__interval": "the panel's step",
    });
    let concrete = |expr: &str, step: f64| -> String {
        expr.replace("${__rate_interval}", rate_interval)
            .replace("$__rate_interval", rate_interval)
            .replace("${__range}", &format!("{}s", range as u64))
            .replace("$__range", &format!("{}s", range as u64))
            .replace("${__interval}", &format!("{}s", step as u64))
            .replace("$__interval", &format!("{}s", step as u64))
            .replace("${cluster}", ".*")
            .replace("$cluster", ".*")
            .replace("${csp_namespace}", ".*")
            .replace("$csp_namespace", ".*")
            .replace("${csp_contract}", ".*")
            .replace("$csp_contract", ".*")
    };
    let width_px = |p: &Value| p["gridPos"]["w"].as_f64().unwrap_or(12.0) * COL;
    let mut panels = Vec::new();
    let mut all = Vec::new();
    flatten(dashboard["panels"].as_array().map(Vec::as_slice).unwrap_or_default(), &mut all);
    for p in all {
        let mut queries = Vec::new();
        for t in p["targets"].as_array().into_iter().flatten() {
            let Some(expr) = t["expr"].as_str() else { continue };
            // The step: the target's or panel's min interval (else the data source's), or the range over
            // the panel's max data points (its width in pixels by default), whichever is longer; the
            // range's start and end aligned to it, as Grafana does.
            let min_interval = t["interval"]
                .as_str()
                .or(p["interval"].as_str())
                .and_then(duration_secs)
                .unwrap_or(DATASOURCE_INTERVAL);
            let points = p["maxDataPoints"].as_f64().unwrap_or_else(|| width_px(p));
            let step = min_interval.max((range / points).ceil());
            let q = concrete(expr, step);
            let instant = t["instant"] == true && t["range"] != true;
            let result = if instant {
                client.instant(&q, end)
            } else {
                client.range(&q, (start / step).floor() * step, (end / step).floor() * step, step)
            };
            queries.push(json!({
                "refId": t["refId"], "expr": expr, "query": q, "legendFormat": t["legendFormat"],
                "instant": instant, "step": step, "result": result,
            }));
        }
        panels.push(json!({"panel": p, "queries": queries}));
    }
    let annotations: Vec<Value> = dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let expr = a["expr"].as_str()?;
            let step = a["step"].as_str().and_then(duration_secs).unwrap_or(60.0);
            let q = concrete(expr, step);
            let result = client.range(&q, (start / step).floor() * step, end, step);
            Some(json!({"name": a["name"], "iconColor": a["iconColor"], "titleFormat": a["titleFormat"],
                "expr": expr, "query": q, "step": step, "result": result}))
        })
        .collect();
    json!({
        "about": "The raw Prometheus answers docs/dashboard.svg is drawn from: every target of every panel of the chart's Grafana dashboard, its variables set as Grafana sets them for All, run against a real Prometheus (the chart's recording rules) that scraped a real operator and two real Envoys during the scenario below. Written by bench/src/bin/dashboard_shot.rs (make dashboard-screenshot).",
        "dashboard": {"uid": dashboard["uid"], "title": dashboard["title"], "path": "charts/channel-contracts/files/dashboards/channel-contracts.json"},
        "window": {"start": start, "end": end},
        "variables": variables,
        "panels": panels,
        "annotations": annotations,
    })
}

fn flatten<'a>(panels: &'a [Value], out: &mut Vec<&'a Value>) {
    for p in panels {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            flatten(inner, out);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Drawing.
// ---------------------------------------------------------------------------------------------------

/// The width of a grid column and the height of a grid row, in pixels.
const COL: f64 = 66.0;
const ROW: f64 = 30.0;
const PAD: f64 = 12.0;
const HEADER: f64 = 92.0;
const GAP: f64 = 8.0;

const BG: &str = "#111217";
const PANEL: &str = "#181b1f";
const BORDER: &str = "#2c3235";
const TEXT: &str = "#ccccdc";
const DIM: &str = "#8e8e9e";
const GRID: &str = "#25282d";
/// Grafana's classic palette.
const PALETTE: [&str; 12] = [
    "#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9", "#705DA0", "#508642", "#CCA300",
    "#447EBC", "#C15C17",
];

fn color(name: &str) -> String {
    match name {
        "green" => "#73BF69",
        "red" => "#F2495C",
        "yellow" => "#FADE2A",
        "orange" => "#FF9830",
        "blue" => "#5794F2",
        "purple" => "#B877D9",
        "transparent" => "none",
        other => other,
    }
    .to_owned()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn panels_of(results: &Value) -> impl Iterator<Item = &Value> {
    results["panels"].as_array().into_iter().flatten()
}

fn has_data(p: &Value) -> bool {
    p["queries"].as_array().into_iter().flatten().any(|q| q["result"].as_array().is_some_and(|r| !r.is_empty()))
}

/// One series of a query's answer: its display name and its points (unix seconds, value).
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
    points: Vec<(f64, f64)>,
    ref_id: String,
}

fn series_of(q: &Value) -> Vec<Series> {
    let legend = q["legendFormat"].as_str().unwrap_or_default();
    q["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let labels: BTreeMap<String, String> = r["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let point = |p: &Value| -> Option<(f64, f64)> {
                Some((p[0].as_f64()?, p[1].as_str()?.parse::<f64>().ok().filter(|v| v.is_finite())?))
            };
            let points: Vec<(f64, f64)> = match r["values"].as_array() {
                Some(values) => values.iter().filter_map(point).collect(),
                None => point(&r["value"]).into_iter().collect(),
            };
            let name = display_name(legend, &labels);
            // A legend that renders empty: Grafana names the series by its query.
            let name = if name.is_empty() { q["query"].as_str().unwrap_or_default().to_owned() } else { name };
            Series { name, labels, points, ref_id: q["refId"].as_str().unwrap_or_default().to_owned() }
        })
        .collect()
}

/// Grafana's legend: `{{label}}` replaced by the series' label (missing: empty), spaces collapsed; no
/// legend or `__auto`: the series' labels.
fn display_name(legend: &str, labels: &BTreeMap<String, String>) -> String {
    if legend.is_empty() || legend == "__auto" {
        let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        return format!("{{{}}}", inner.join(", "));
    }
    let mut out = String::new();
    let mut rest = legend;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else { break };
        out.push_str(labels.get(after[..j].trim()).map(String::as_str).unwrap_or(""));
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A value in a Grafana unit.
fn format_value(v: f64, unit: &str, decimals: Option<usize>) -> String {
    let auto = |x: f64| -> usize {
        let a = x.abs();
        if a == 0.0 || a >= 100.0 {
            0
        } else if a >= 10.0 {
            1
        } else {
            2
        }
    };
    match unit {
        "percentunit" => {
            let p = v * 100.0;
            format!("{p:.*}%", decimals.unwrap_or(if (p - p.round()).abs() < 1e-9 { 0 } else { 1 }))
        }
        "s" => {
            if v.abs() < 1.0 && v != 0.0 {
                let ms = v * 1000.0;
                format!("{ms:.*} ms", decimals.unwrap_or(auto(ms).min(1)))
            } else {
                format!("{v:.*} s", decimals.unwrap_or(auto(v)))
            }
        }
        "reqps" => format!("{v:.*} req/s", decimals.unwrap_or(auto(v))),
        _ => format!("{v:.*}", decimals.unwrap_or(if (v - v.round()).abs() < 1e-9 { 0 } else { auto(v) })),
    }
}

/// The time of day (UTC) of a unix time, `HH:MM` (and `:SS` when asked).
fn hhmm(t: f64, seconds: bool) -> String {
    let s = t as u64;
    if seconds {
        format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
    } else {
        format!("{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60)
    }
}

/// The colour of `v` by the panel's thresholds (the last step at or under it).
fn threshold_color(defaults: &Value, v: f64) -> String {
    let mut c = "green".to_owned();
    for step in defaults["thresholds"]["steps"].as_array().into_iter().flatten() {
        match step["value"].as_f64() {
            None => c = step["color"].as_str().unwrap_or("green").to_owned(),
            Some(at) if v >= at => c = step["color"].as_str().unwrap_or("green").to_owned(),
            Some(_) => {}
        }
    }
    color(&c)
}

/// A value mapping's text and colour for `v`, if the mappings have one.
fn mapped(mappings: &Value, v: f64) -> Option<(String, String)> {
    for m in mappings.as_array().into_iter().flatten() {
        if m["type"] != "value" {
            continue;
        }
        for (key, to) in m["options"].as_object().into_iter().flatten() {
            if key.parse::<f64>().is_ok_and(|k| (k - v).abs() < 1e-9) {
                return Some((
                    to["text"].as_str().unwrap_or(key).to_owned(),
                    color(to["color"].as_str().unwrap_or(TEXT)),
                ));
            }
        }
    }
    None
}

/// The properties an override sets for a series named `name` (byRegexp `/…/` and byName matchers).
fn overrides_for<'a>(field_config: &'a Value, name: &str) -> Vec<&'a Value> {
    let mut out = Vec::new();
    for o in field_config["overrides"].as_array().into_iter().flatten() {
        let options = o["matcher"]["options"].as_str().unwrap_or_default();
        let hit = match o["matcher"]["id"].as_str() {
            Some("byName") => options == name,
            Some("byRegexp") => regex_lite_match(options.trim_matches('/'), name),
            _ => false,
        };
        if hit {
            out.extend(o["properties"].as_array().into_iter().flatten());
        }
    }
    out
}

/// The dashboard's override regexps are ` suffix$` or `^prefix`-style literals: enough for them.
fn regex_lite_match(re: &str, s: &str) -> bool {
    match (re.strip_prefix('^'), re.strip_suffix('$')) {
        (Some(p), _) if !p.ends_with('$') => s.starts_with(p),
        (_, Some(suffix)) => s.ends_with(suffix),
        _ => s.contains(re),
    }
}

/// Nice axis ticks between `lo` and `hi`.
fn ticks(lo: f64, hi: f64, max_ticks: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / max_ticks.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-6 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn text(svg: &mut String, x: f64, y: f64, size: f64, fill: &str, anchor: &str, weight: &str, s: &str) {
    let _ = writeln!(
        svg,
        r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" fill="{fill}" text-anchor="{anchor}" font-weight="{weight}">{}</text>"#,
        esc(s)
    );
}

/// `s` cut to about `px` pixels at `size` (a rough average glyph width).
fn fit(s: &str, px: f64, size: f64) -> String {
    let max = ((px / (size * 0.56)).floor() as usize).max(4);
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let keep: String = s.chars().take(max - 1).collect();
        format!("{keep}…")
    }
}

/// A shorter display name: the test namespace's generated name is long and the same everywhere.
fn shorten(name: &str, namespace: &str) -> String {
    if namespace.is_empty() { name.to_owned() } else { name.replace(&format!("{namespace}/"), "") }
}

struct Area {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

fn render(results: &Value) -> String {
    let start = results["window"]["start"].as_f64().unwrap_or(0.0);
    let end = results["window"]["end"].as_f64().unwrap_or(1.0);
    let namespace = results["scenario"]["namespace"].as_str().unwrap_or_default().to_owned();
    let bottom = panels_of(results)
        .map(|p| {
            let g = &p["panel"]["gridPos"];
            g["y"].as_f64().unwrap_or(0.0) + g["h"].as_f64().unwrap_or(0.0)
        })
        .fold(0.0, f64::max);
    let width = 24.0 * COL + 2.0 * PAD;
    let height = HEADER + bottom * ROW + PAD;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="Inter, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="{BG}"/>"#);
    let title = results["dashboard"]["title"].as_str().unwrap_or("Channel Contracts");
    text(&mut svg, PAD, 30.0, 20.0, TEXT, "start", "600", title);
    text(
        &mut svg,
        width - PAD,
        30.0,
        13.0,
        DIM,
        "end",
        "400",
        &format!("{} to {} UTC ({} min)", hhmm(start, true), hhmm(end, true), ((end - start) / 60.0).round()),
    );
    let mut x = PAD;
    for (label, value) in [("Data source", "Prometheus"), ("Cluster", "All"), ("Namespace", "All"), ("Contract", "All")]
    {
        let w = 28.0 + (label.len() + value.len()) as f64 * 7.4;
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.1}" y="44" width="{w:.1}" height="24" rx="2" fill="{PANEL}" stroke="{BORDER}"/>"#
        );
        text(&mut svg, x + 8.0, 60.0, 12.0, DIM, "start", "400", label);
        text(&mut svg, x + 16.0 + label.len() as f64 * 7.4, 60.0, 12.0, TEXT, "start", "500", value);
        x += w + 8.0;
    }
    let note = format!(
        "Drawn by bench/src/bin/dashboard_shot.rs from real Prometheus data (bench/results/dashboard.json), not by Grafana. Legends leave out the test namespace ({namespace}/)."
    );
    text(&mut svg, width - PAD, 60.0, 11.0, DIM, "end", "400", &note);

    let faults = fault_bands(results);
    for p in panels_of(results) {
        let panel = &p["panel"];
        let g = &panel["gridPos"];
        let area = Area {
            x: PAD + g["x"].as_f64().unwrap_or(0.0) * COL,
            y: HEADER + g["y"].as_f64().unwrap_or(0.0) * ROW,
            w: g["w"].as_f64().unwrap_or(24.0) * COL - GAP,
            h: g["h"].as_f64().unwrap_or(8.0) * ROW - GAP,
        };
        let title = panel["title"].as_str().unwrap_or_default();
        if panel["type"] == "row" {
            text(&mut svg, area.x + 2.0, area.y + 20.0, 15.0, TEXT, "start", "600", &format!("⌄ {title}"));
            continue;
        }
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="3" fill="{PANEL}" stroke="{BORDER}"/>"#,
            area.x, area.y, area.w, area.h
        );
        text(&mut svg, area.x + 10.0, area.y + 20.0, 13.0, TEXT, "start", "600", &fit(title, area.w - 20.0, 13.0));
        let inner = Area { x: area.x + 8.0, y: area.y + 30.0, w: area.w - 16.0, h: area.h - 38.0 };
        let series: Vec<Series> = p["queries"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(series_of)
            .map(|mut s| {
                s.name = shorten(&s.name, &namespace);
                s
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if series.is_empty() {
            text(
                &mut svg,
                inner.x + inner.w / 2.0,
                inner.y + inner.h / 2.0 + 6.0,
                16.0,
                DIM,
                "middle",
                "400",
                "No data",
            );
            continue;
        }
        match panel["type"].as_str().unwrap_or_default() {
            "timeseries" => timeseries(&mut svg, panel, &series, &inner, start, end, &faults),
            "status-history" => status_history(&mut svg, panel, &series, &inner, start, end),
            "stat" => stat(&mut svg, panel, &series, &inner),
            "table" => table(&mut svg, panel, &series, &inner, &namespace),
            "bargauge" => bargauge(&mut svg, panel, &series, &inner),
            other => text(
                &mut svg,
                inner.x + 4.0,
                inner.y + 16.0,
                12.0,
                DIM,
                "start",
                "400",
                &format!("({other} not drawn)"),
            ),
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// The drill-fault annotation's regions (unix seconds), from its query's answer.
fn fault_bands(results: &Value) -> Vec<(f64, f64)> {
    let mut bands = Vec::new();
    for a in results["annotations"].as_array().into_iter().flatten() {
        let step = a["step"].as_f64().unwrap_or(60.0);
        let q = json!({"result": a["result"], "legendFormat": ""});
        for s in series_of(&q) {
            let mut run: Option<(f64, f64)> = None;
            for (t, _) in s.points {
                run = match run {
                    Some((a, b)) if t - b <= step * 1.01 => Some((a, t)),
                    Some(done) => {
                        bands.push(done);
                        Some((t, t))
                    }
                    None => Some((t, t)),
                };
            }
            bands.extend(run);
        }
    }
    bands
}

fn legend_table(svg: &mut String, panel: &Value, series: &[Series], colors: &[String], area: &Area) {
    let unit = panel["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("short");
    let decimals = panel["fieldConfig"]["defaults"]["decimals"].as_u64().map(|d| d as usize);
    text(svg, area.x + area.w - 4.0, area.y + 10.0, 11.0, DIM, "end", "500", "Last *");
    let line = 16.0;
    let rows = (((area.h - 16.0) / line).floor() as usize).max(1);
    for (i, s) in series.iter().enumerate().take(rows) {
        let y = area.y + 26.0 + i as f64 * line;
        let _ =
            writeln!(svg, r#"<rect x="{:.1}" y="{:.1}" width="12" height="3" fill="{}"/>"#, area.x, y - 5.0, colors[i]);
        let last = s.points.last().map(|p| format_value(p.1, unit, decimals)).unwrap_or_default();
        text(svg, area.x + 18.0, y, 11.0, TEXT, "start", "400", &fit(&s.name, area.w - 80.0, 11.0));
        text(svg, area.x + area.w - 4.0, y, 11.0, TEXT, "end", "400", &last);
    }
    if series.len() > rows {
        text(
            svg,
            area.x + 18.0,
            area.y + 26.0 + rows as f64 * line,
            11.0,
            DIM,
            "start",
            "400",
            &format!("+{} more", series.len() - rows),
        );
    }
}

fn timeseries(
    svg: &mut String,
    panel: &Value,
    series: &[Series],
    area: &Area,
    start: f64,
    end: f64,
    faults: &[(f64, f64)],
) {
    let fc = &panel["fieldConfig"];
    let d = &fc["defaults"];
    let custom = &d["custom"];
    let unit = d["unit"].as_str().unwrap_or("short");
    let decimals = d["decimals"].as_u64().map(|d| d as usize);
    let bars = custom["drawStyle"] == "bars";
    let stacked = custom["stacking"]["mode"] == "normal";
    let legend_w = if area.w > 1000.0 { area.w * 0.25 } else { area.w * 0.38 };
    let plot = Area { x: area.x + 58.0, y: area.y + 4.0, w: area.w - legend_w - 70.0, h: area.h - 24.0 };
    let colors: Vec<String> = (0..series.len()).map(|i| PALETTE[i % PALETTE.len()].to_owned()).collect();
    legend_table(svg, panel, series, &colors, &Area { x: plot.x + plot.w + 14.0, y: area.y, w: legend_w, h: area.h });

    // Stacked bars: the sum per timestamp sets the top.
    let mut stack_top: BTreeMap<i64, f64> = BTreeMap::new();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in series {
        for (t, v) in &s.points {
            let v = if stacked {
                let e = stack_top.entry(*t as i64).or_insert(0.0);
                *e += v;
                *e
            } else {
                *v
            };
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if bars {
        lo = lo.min(0.0);
    }
    if let Some(m) = custom["axisSoftMin"].as_f64() {
        lo = lo.min(m);
    }
    if let Some(m) = d["min"].as_f64() {
        lo = m;
    }
    if let Some(m) = d["max"].as_f64() {
        hi = m;
    }
    if hi - lo < 1e-9 {
        hi = lo + if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        if d["min"].is_null() && lo > 0.0 {
            lo = (lo - (hi - lo)).max(0.0);
        }
    }
    let xs = |t: f64| plot.x + (t - start) / (end - start) * plot.w;
    let ys = |v: f64| plot.y + plot.h - (v - lo) / (hi - lo) * plot.h;

    // Grid and axes.
    for v in ticks(lo, hi, 4) {
        let y = ys(v);
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{GRID}"/>"#,
            plot.x,
            plot.x + plot.w
        );
        text(svg, plot.x - 6.0, y + 4.0, 10.0, DIM, "end", "400", &format_value(v, unit, tick_decimals(unit, lo, hi)));
    }
    let minute = 60.0;
    let mut t = (start / minute).ceil() * minute;
    while t <= end {
        let x = xs(t);
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{GRID}"/>"#,
            plot.y,
            plot.y + plot.h
        );
        text(svg, x, plot.y + plot.h + 14.0, 10.0, DIM, "middle", "400", &hhmm(t, false));
        t += minute;
    }
    // The drill-fault annotation: an orange region.
    for (a, b) in faults {
        let (x1, x2) = (xs(a.max(start)), xs(b.min(end)));
        let _ = writeln!(
            svg,
            r##"<rect x="{x1:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#FF9830" fill-opacity="0.12"/><line x1="{x1:.1}" y1="{:.1}" x2="{x1:.1}" y2="{:.1}" stroke="#FF9830" stroke-dasharray="3 3"/>"##,
            plot.y,
            (x2 - x1).max(2.0),
            plot.h,
            plot.y,
            plot.y + plot.h
        );
    }
    let _ = writeln!(
        svg,
        r#"<g><clipPath id="c{0}"><rect x="{1:.1}" y="{2:.1}" width="{3:.1}" height="{4:.1}"/></clipPath></g>"#,
        panel["id"],
        plot.x,
        plot.y - 1.0,
        plot.w,
        plot.h + 2.0
    );
    let _ = writeln!(svg, r#"<g clip-path="url(#c{})">"#, panel["id"]);
    if bars {
        let mut times: Vec<i64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0 as i64)).collect();
        times.sort_unstable();
        times.dedup();
        let spacing = times.windows(2).map(|w| (w[1] - w[0]) as f64).fold(end - start, f64::min);
        let bw = (spacing / (end - start) * plot.w * 0.6).clamp(2.0, 40.0);
        let mut base: BTreeMap<i64, f64> = BTreeMap::new();
        for (s, c) in series.iter().zip(&colors) {
            for (t, v) in &s.points {
                let b = base.entry(*t as i64).or_insert(0.0);
                let (y0, y1) = (ys(*b), ys(*b + v));
                *b += v;
                let _ = writeln!(
                    svg,
                    r#"<rect x="{:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="{c}" fill-opacity="0.8" stroke="{c}"/>"#,
                    xs(*t) - bw / 2.0,
                    y1,
                    (y0 - y1).max(0.0)
                );
            }
        }
    } else {
        let step =
            series.iter().flat_map(|s| s.points.windows(2).map(|w| w[1].0 - w[0].0)).fold(f64::INFINITY, f64::min);
        for (s, c) in series.iter().zip(&colors) {
            let props = overrides_for(fc, &s.name);
            let prop = |id: &str| props.iter().rev().find(|p| p["id"] == id).map(|p| &p["value"]);
            let width =
                prop("custom.lineWidth").and_then(Value::as_f64).unwrap_or(custom["lineWidth"].as_f64().unwrap_or(1.0));
            let fill = prop("custom.fillOpacity")
                .and_then(Value::as_f64)
                .unwrap_or(custom["fillOpacity"].as_f64().unwrap_or(0.0));
            let dash = prop("custom.lineStyle")
                .filter(|s| s["fill"] == "dash")
                .map(|s| {
                    let d: Vec<String> = s["dash"].as_array().into_iter().flatten().map(|v| v.to_string()).collect();
                    format!(r#" stroke-dasharray="{}""#, if d.is_empty() { "10 10".to_owned() } else { d.join(" ") })
                })
                .unwrap_or_default();
            // Lines break where a point is missing (spanNulls false).
            let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
            for p in &s.points {
                match runs.last_mut() {
                    Some(run) if run.last().is_some_and(|l| p.0 - l.0 <= step * 1.5) => run.push(*p),
                    _ => runs.push(vec![*p]),
                }
            }
            for run in runs {
                let pts: Vec<String> = run.iter().map(|(t, v)| format!("{:.1},{:.1}", xs(*t), ys(*v))).collect();
                if fill > 0.0 && run.len() > 1 {
                    let base = ys(lo.max(0.0_f64.min(hi)));
                    let _ = writeln!(
                        svg,
                        r#"<polygon points="{:.1},{base:.1} {} {:.1},{base:.1}" fill="{c}" fill-opacity="{:.2}"/>"#,
                        xs(run[0].0),
                        pts.join(" "),
                        xs(run[run.len() - 1].0),
                        fill / 100.0
                    );
                }
                if run.len() == 1 {
                    let _ = writeln!(
                        svg,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{c}"/>"#,
                        xs(run[0].0),
                        ys(run[0].1)
                    );
                } else {
                    let _ = writeln!(
                        svg,
                        r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="{width}"{dash} stroke-linejoin="round"/>"#,
                        pts.join(" ")
                    );
                }
            }
        }
    }
    svg.push_str("</g>\n");
    let _ = decimals;
}

fn tick_decimals(unit: &str, lo: f64, hi: f64) -> Option<usize> {
    let span = hi - lo;
    match unit {
        "percentunit" => Some(if span * 100.0 >= 10.0 {
            0
        } else if span * 100.0 >= 1.0 {
            1
        } else {
            2
        }),
        "s" => None,
        _ => Some(if span >= 10.0 {
            0
        } else if span >= 1.0 {
            1
        } else {
            2
        }),
    }
}

fn status_history(svg: &mut String, panel: &Value, series: &[Series], area: &Area, start: f64, end: f64) {
    let d = &panel["fieldConfig"]["defaults"];
    let show_legend = panel["options"]["legend"]["showLegend"] != false;
    let label_w = area.w * 0.26;
    let axis_h = 18.0;
    let legend_h = if show_legend { 20.0 } else { 0.0 };
    let grid = Area { x: area.x + label_w, y: area.y, w: area.w - label_w, h: area.h - axis_h - legend_h };
    let row_h = grid.h / series.len() as f64;
    let row_fill = panel["options"]["rowHeight"].as_f64().unwrap_or(0.9);
    let col_fill = panel["options"]["colWidth"].as_f64().unwrap_or(0.9);
    let opacity = d["custom"]["fillOpacity"].as_f64().unwrap_or(80.0) / 100.0;
    let step = series.iter().flat_map(|s| s.points.windows(2).map(|w| w[1].0 - w[0].0)).fold(60.0, f64::min);
    let xs = |t: f64| grid.x + (t - start) / (end - start) * grid.w;
    for (i, s) in series.iter().enumerate() {
        let y = grid.y + i as f64 * row_h;
        text(svg, grid.x - 8.0, y + row_h / 2.0 + 4.0, 11.0, TEXT, "end", "400", &fit(&s.name, label_w - 12.0, 11.0));
        for (t, v) in &s.points {
            // A value holds from its time until the next one.
            let (x1, x2) = (xs(*t).max(grid.x), xs(t + step).min(grid.x + grid.w));
            if x2 <= x1 {
                continue;
            }
            let c = mapped(&d["mappings"], *v).map(|m| m.1).unwrap_or_else(|| threshold_color(d, *v));
            let w = (x2 - x1) * col_fill;
            let h = row_h * row_fill;
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{w:.1}" height="{h:.1}" fill="{c}" fill-opacity="{opacity:.2}" stroke="{c}"/>"#,
                x1 + (x2 - x1 - w) / 2.0,
                y + (row_h - h) / 2.0
            );
            if row_h >= 16.0 && w >= 44.0 {
                let unit = d["unit"].as_str().unwrap_or("short");
                let label = mapped(&d["mappings"], *v)
                    .map(|m| m.0)
                    .unwrap_or_else(|| format_value(*v, unit, d["decimals"].as_u64().map(|d| d as usize)));
                text(svg, x1 + (x2 - x1) / 2.0, y + row_h / 2.0 + 4.0, 10.0, "#111217", "middle", "500", &label);
            }
        }
    }
    let mut t = (start / 60.0).ceil() * 60.0;
    while t <= end {
        text(svg, xs(t), grid.y + grid.h + 13.0, 10.0, DIM, "middle", "400", &hhmm(t, false));
        t += 60.0;
    }
    if show_legend {
        let unit = d["unit"].as_str().unwrap_or("short");
        let steps: Vec<&Value> = d["thresholds"]["steps"].as_array().into_iter().flatten().collect();
        let mut x = area.x + 4.0;
        let y = area.y + area.h - 5.0;
        for (i, s) in steps.iter().enumerate() {
            let label = match (s["value"].as_f64(), steps.get(i + 1).and_then(|n| n["value"].as_f64())) {
                (None, Some(next)) => format!("< {}", format_value(next, unit, Some(0))),
                (Some(v), _) => format!("{}+", format_value(v, unit, Some(0))),
                (None, None) => "all".to_owned(),
            };
            let c = color(s["color"].as_str().unwrap_or("green"));
            let _ = writeln!(svg, r#"<rect x="{x:.1}" y="{:.1}" width="10" height="10" rx="2" fill="{c}"/>"#, y - 9.0);
            text(svg, x + 14.0, y, 11.0, TEXT, "start", "400", &label);
            x += 24.0 + label.len() as f64 * 6.5;
        }
        text(svg, x + 6.0, y, 11.0, DIM, "start", "400", "(no cell: no traffic)");
    }
}

fn stat(svg: &mut String, panel: &Value, series: &[Series], area: &Area) {
    let d = &panel["fieldConfig"]["defaults"];
    let unit = d["unit"].as_str().unwrap_or("none");
    let decimals = d["decimals"].as_u64().map(|d| d as usize);
    let with_name = panel["options"]["textMode"] == "value_and_name";
    let w = area.w / series.len() as f64;
    for (i, s) in series.iter().enumerate() {
        let Some(&(_, v)) = s.points.last() else { continue };
        let c = threshold_color(d, v);
        let x = area.x + i as f64 * w;
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="2" fill="{c}"/>"#,
            x + 2.0,
            area.y,
            w - 4.0,
            area.h
        );
        let size = (area.h * 0.42).min(w * 0.5).min(72.0);
        let cy = area.y + area.h / 2.0 + size * 0.35;
        if with_name {
            text(svg, x + w / 2.0, area.y + 22.0, 12.0, "#111217", "middle", "500", &fit(&s.name, w - 10.0, 12.0));
        }
        text(svg, x + w / 2.0, cy, size, "#111217", "middle", "600", &format_value(v, unit, decimals));
    }
}

/// A table row: its labels and its values by column.
type Row = (Vec<(String, String)>, BTreeMap<String, f64>);

fn table(svg: &mut String, panel: &Value, series: &[Series], area: &Area, namespace: &str) {
    // Grafana's "merge": one row per label set, one "Value #<refId>" column per query; then "organize".
    let organize = panel["transformations"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["id"] == "organize")
        .map(|t| t["options"].clone())
        .unwrap_or(Value::Null);
    let mut rows: BTreeMap<Vec<(String, String)>, BTreeMap<String, f64>> = BTreeMap::new();
    let mut columns: Vec<String> = Vec::new();
    for s in series {
        let key: Vec<(String, String)> = s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (k, _) in &key {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
        let col = format!("Value #{}", s.ref_id);
        if !columns.contains(&col) {
            columns.push(col.clone());
        }
        if let Some(&(_, v)) = s.points.last() {
            rows.entry(key).or_default().insert(col, v);
        }
    }
    let excluded = |c: &str| organize["excludeByName"][c] == true;
    columns.retain(|c| !excluded(c));
    columns.sort_by_key(|c| organize["indexByName"][c.as_str()].as_u64().unwrap_or(100));
    let header = |c: &str| organize["renameByName"][c].as_str().unwrap_or(c).to_owned();
    let fc = &panel["fieldConfig"];
    let cell = |c: &str, row: &Row| -> (String, Option<String>) {
        if let Some(v) = row.1.get(c) {
            let props = overrides_for(fc, &header(c));
            let unit = props.iter().find(|p| p["id"] == "unit").and_then(|p| p["value"].as_str()).unwrap_or("short");
            let background =
                props.iter().any(|p| p["id"] == "custom.cellOptions" && p["value"]["type"] == "color-background");
            if let Some((text, color)) =
                props.iter().find(|p| p["id"] == "mappings").and_then(|p| mapped(&p["value"], *v))
            {
                return (text, background.then_some(color));
            }
            return (format_value(*v, unit, None), None);
        }
        let label = row.0.iter().find(|(k, _)| k == c).map(|(_, v)| v.clone()).unwrap_or_default();
        (if c == "csp_namespace" && label == namespace { "(test namespace)".to_owned() } else { label }, None)
    };
    let mut rows: Vec<Row> = rows.into_iter().collect();
    if let Some(by) = panel["options"]["sortBy"].as_array().and_then(|s| s.first()) {
        let name = by["displayName"].as_str().unwrap_or_default();
        if let Some(c) = columns.iter().find(|c| header(c) == name).cloned() {
            rows.sort_by(|a, b| {
                let (x, y) = (a.1.get(&c).copied().unwrap_or(f64::MIN), b.1.get(&c).copied().unwrap_or(f64::MIN));
                if by["desc"] == true { y.total_cmp(&x) } else { x.total_cmp(&y) }
            });
        }
    }
    let cw = area.w / columns.len().max(1) as f64;
    let line = 26.0;
    for (i, c) in columns.iter().enumerate() {
        let x = area.x + i as f64 * cw;
        text(svg, x + 6.0, area.y + 14.0, 11.0, "#5794F2", "start", "600", &fit(&header(c), cw - 10.0, 11.0));
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{BORDER}"/>"#,
        area.x,
        area.y + 22.0,
        area.x + area.w,
        area.y + 22.0
    );
    for (r, row) in rows.iter().enumerate() {
        let y = area.y + 24.0 + r as f64 * line;
        if y + line > area.y + area.h {
            break;
        }
        for (i, c) in columns.iter().enumerate() {
            let x = area.x + i as f64 * cw;
            let (value, background) = cell(c, row);
            let fg = if let Some(bg) = &background {
                let _ = writeln!(
                    svg,
                    r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{bg}"/>"#,
                    x + 1.0,
                    y + 1.0,
                    cw - 2.0,
                    line - 2.0
                );
                "#111217"
            } else {
                TEXT
            };
            text(svg, x + 6.0, y + 17.0, 12.0, fg, "start", "400", &fit(&value, cw - 10.0, 12.0));
        }
    }
}

fn bargauge(svg: &mut String, panel: &Value, series: &[Series], area: &Area) {
    let fc = &panel["fieldConfig"];
    let d = &fc["defaults"];
    let unit = d["unit"].as_str().unwrap_or("none");
    let decimals = d["decimals"].as_u64().map(|d| d as usize);
    let values: Vec<f64> = series.iter().map(|s| s.points.last().map(|p| p.1).unwrap_or(0.0)).collect();
    let max = d["max"].as_f64().unwrap_or_else(|| values.iter().copied().fold(0.0, f64::max).max(1e-9));
    let min = d["min"].as_f64().unwrap_or(0.0);
    let name_w = area.w * 0.3;
    let value_w = 70.0;
    let bar_w = area.w - name_w - value_w - 12.0;
    let row_h = (area.h / series.len() as f64).min(34.0);
    let lcd = panel["options"]["displayMode"] == "lcd";
    for (i, (s, v)) in series.iter().zip(&values).enumerate() {
        let y = area.y + i as f64 * row_h;
        let props = overrides_for(fc, &s.name);
        let fixed =
            props.iter().rev().find(|p| p["id"] == "color").and_then(|p| p["value"]["fixedColor"].as_str()).map(color);
        let c = fixed.unwrap_or_else(|| {
            if d["color"]["mode"] == "fixed" {
                color(d["color"]["fixedColor"].as_str().unwrap_or("blue"))
            } else {
                threshold_color(d, *v)
            }
        });
        let h = row_h * 0.7;
        let bx = area.x + name_w + 6.0;
        text(svg, bx - 8.0, y + row_h / 2.0 + 4.0, 11.0, TEXT, "end", "400", &fit(&s.name, name_w - 10.0, 11.0));
        let _ = writeln!(
            svg,
            r#"<rect x="{bx:.1}" y="{:.1}" width="{bar_w:.1}" height="{h:.1}" fill="{GRID}"/>"#,
            y + (row_h - h) / 2.0
        );
        let filled = ((v - min) / (max - min)).clamp(0.0, 1.0) * bar_w;
        if lcd {
            let cells = (bar_w / 8.0).floor() as usize;
            for k in 0..((filled / 8.0).round() as usize).min(cells) {
                let _ = writeln!(
                    svg,
                    r#"<rect x="{:.1}" y="{:.1}" width="6" height="{h:.1}" fill="{c}"/>"#,
                    bx + k as f64 * 8.0,
                    y + (row_h - h) / 2.0
                );
            }
        } else {
            let _ = writeln!(
                svg,
                r#"<rect x="{bx:.1}" y="{:.1}" width="{filled:.1}" height="{h:.1}" fill="{c}" fill-opacity="0.85"/>"#,
                y + (row_h - h) / 2.0
            );
        }
        text(svg, bx + bar_w + 8.0, y + row_h / 2.0 + 5.0, 14.0, &c, "start", "600", &format_value(*v, unit, decimals));
    }
}
