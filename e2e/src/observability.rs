//! The observability tools of the SLO loop, real and local: a Prometheus (from its Go module, built by
//! `make tools`) that scrapes the proxies and the operator and evaluates the chart's recording rules, and
//! an OpenTelemetry Collector (built with the collector builder: OTLP receiver, file exporter) that the
//! proxies export their spans to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::xds::{XdsBed, XdsOperator};
use crate::{Tied, free_port, helm, repo_root, tool, wait_until};

/// An operator of its own (`name`, contracts labelled with a fresh id) whose drill triggers ask a real
/// Prometheus (`--prometheus-url`), and that Prometheus, in the bed's network namespace (listening on all
/// its addresses, so that the operator on the host reaches it), scraping the operator (through the bed's
/// link to the host) and the Envoys whose admin ports are `envoy_admins` (on the namespace's loopback),
/// every second, with the chart's recording rules and alerts.
pub fn operator_with_prometheus(bed: &XdsBed, name: &str, envoy_admins: &[u16]) -> (XdsOperator, Prometheus) {
    let port = free_port();
    let url = format!("http://{}:{port}", bed.inside_address());
    let operator = XdsOperator::start(name, &crate::unique("prom"), &["--prometheus-url".into(), url]);
    let jobs = vec![
        Job {
            name: "channel-contracts-operator".into(),
            path: "/metrics".into(),
            targets: vec![format!("{}:{}", bed.host_address(), operator.admin_port)],
        },
        Job {
            name: "envoy".into(),
            path: "/stats/prometheus".into(),
            targets: envoy_admins.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
        },
    ];
    let rules = chart_rules(&bed.dir);
    let prometheus = Prometheus::start_at(&bed.dir, Some(&bed.netns.name), "0.0.0.0", port, &jobs, &[rules]);
    (operator, prometheus)
}

/// The chart's recording rules and alerts, rendered by helm (`metrics.prometheusRule.enabled=true`), as a
/// Prometheus rule file (`groups:` of the PrometheusRule's spec).
pub fn chart_rules(dir: &Path) -> PathBuf {
    let chart = repo_root().join("charts/channel-contracts");
    let rendered = helm(&[
        "template",
        "csp",
        &chart.to_string_lossy(),
        "--namespace",
        "csp-system",
        // helm template assumes an old Kubernetes without a cluster; the chart requires a recent one.
        "--kube-version",
        &kube_version(),
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    ])
    .ok();
    let rule: Value = yaml_serde::from_str(&rendered).expect("the PrometheusRule is YAML");
    let groups = serde_json::json!({ "groups": rule["spec"]["groups"].clone() });
    assert!(groups["groups"].as_array().is_some_and(|g| !g.is_empty()), "the chart's PrometheusRule has no groups");
    let file = dir.join("rules.yaml");
    std::fs::write(&file, yaml_serde::to_string(&groups).expect("rules as YAML")).expect("write the rules");
    file
}

/// The pinned Kubernetes version (`e2e/tools/versions.env`).
fn kube_version() -> String {
    let env = std::fs::read_to_string(repo_root().join("e2e/tools/versions.env")).unwrap_or_default();
    env.lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VERSION="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| "v1.37.2".to_owned())
}

/// A scrape job: its name, its metrics path and its targets (`host:port`).
#[derive(Debug, Clone)]
pub struct Job {
    /// `job` label.
    pub name: String,
    /// The path of the metrics.
    pub path: String,
    /// `host:port` of each target.
    pub targets: Vec<String>,
}

/// A real Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    process: Tied,
    /// Where its HTTP API listens (in its network namespace, if any).
    pub port: u16,
    netns: Option<String>,
}

impl Prometheus {
    /// Starts Prometheus with a 1s scrape and evaluation interval, the given jobs and rule files; in
    /// network namespace `netns` when given (to reach proxies that listen on that namespace's loopback).
    pub fn start(dir: &Path, netns: Option<&str>, jobs: &[Job], rule_files: &[PathBuf]) -> Self {
        Self::start_at(dir, netns, "127.0.0.1", free_port(), jobs, rule_files)
    }

    /// [`start`](Self::start) listening on `address:port` (`0.0.0.0` to be reached from outside its
    /// network namespace, e.g. by an operator on the host).
    pub fn start_at(
        dir: &Path,
        netns: Option<&str>,
        address: &str,
        port: u16,
        jobs: &[Job],
        rule_files: &[PathBuf],
    ) -> Self {
        let scrape: Vec<Value> = jobs
            .iter()
            .map(|j| {
                serde_json::json!({
                    "job_name": j.name,
                    "metrics_path": j.path,
                    "scrape_interval": "1s",
                    "static_configs": [{"targets": j.targets}],
                })
            })
            .collect();
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files.iter().map(|f| f.to_string_lossy().into_owned()).collect::<Vec<_>>(),
            "scrape_configs": scrape,
        });
        let file = dir.join("prometheus.yaml");
        std::fs::write(&file, yaml_serde::to_string(&config).expect("config as YAML")).expect("write the config");
        let data = dir.join("prometheus-data");
        let mut args: Vec<String> = Vec::new();
        let program = match netns {
            Some(ns) => {
                args.extend(["netns", "exec", ns].map(String::from));
                args.push(tool("prometheus").to_string_lossy().into_owned());
                PathBuf::from("ip")
            }
            None => tool("prometheus"),
        };
        args.extend([
            format!("--config.file={}", file.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address={address}:{port}"),
            "--log.level=warn".to_owned(),
        ]);
        let process = Tied::spawn(&program, &args, &[], &dir.join("prometheus.log"));
        let p = Self { process, port, netns: netns.map(str::to_owned) };
        wait_until("Prometheus to be ready", Duration::from_secs(60), || {
            p.get("/-/ready").filter(|body| body.contains("Ready")).map(|_| ())
        });
        p
    }

    fn get(&self, path_and_query: &str) -> Option<String> {
        let url = format!("http://127.0.0.1:{}{path_and_query}", self.port);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns, "curl"]);
                c
            }
            None => std::process::Command::new("curl"),
        };
        cmd.args(["-sS", "--max-time", "10", "-g", &url]);
        let out = crate::run(cmd, None);
        out.success.then_some(out.stdout)
    }

    /// An instant query; the result vector (empty when it has no series).
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let body = self.get(&format!("/api/v1/query?query={}", encode(promql))).unwrap_or_default();
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of an instant query that gives one series, if it does.
    pub fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql);
        let first = result.first()?;
        first["value"][1].as_str()?.parse().ok()
    }

    /// The firing alerts' names.
    pub fn firing(&self) -> Vec<String> {
        let body = self.get("/api/v1/alerts").unwrap_or_default();
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        answer["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
            .collect()
    }

    /// The URL the operator reaches it at (it must share the network namespace, or be on the host).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// Percent-encodes a query parameter.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real OpenTelemetry Collector: OTLP over gRPC in, spans as JSON lines into a file out.
#[derive(Debug)]
pub struct Collector {
    process: Tied,
    /// The OTLP gRPC port (127.0.0.1, or the given address).
    pub otlp: std::net::SocketAddr,
    /// The file the spans go to.
    pub output: PathBuf,
}

impl Collector {
    /// Starts the collector with its OTLP gRPC receiver on `listen` (e.g. `10.77.0.1:4317`, reachable from
    /// the proxies) and a file exporter to `<dir>/traces.jsonl`.
    pub fn start(dir: &Path, listen: std::net::SocketAddr) -> Self {
        let output = dir.join("traces.jsonl");
        let config = serde_json::json!({
            "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": listen.to_string()}}}},
            "processors": {"batch": {"timeout": "200ms"}},
            "exporters": {"file": {"path": output.to_string_lossy(), "format": "json", "flush_interval": "200ms"}},
            "service": {
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
                "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["file"]}}
            },
        });
        let file = dir.join("otelcol.yaml");
        std::fs::write(&file, yaml_serde::to_string(&config).expect("config as YAML")).expect("write the config");
        let process =
            Tied::spawn(&tool("otelcol"), &[format!("--config={}", file.display())], &[], &dir.join("otelcol.log"));
        wait_until("the collector's OTLP receiver to listen", Duration::from_secs(60), || {
            std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).ok().map(|_| ())
        });
        Self { process, otlp: listen, output }
    }

    /// Every span exported so far, flattened: its name, attributes (strings) and status.
    pub fn spans(&self) -> Vec<Span> {
        let text = std::fs::read_to_string(&self.output).unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(doc) = serde_json::from_str::<Value>(line) else { continue };
            for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        out.push(Span::from_otlp(span));
                    }
                }
            }
        }
        out
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// One exported span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Its name.
    pub name: String,
    /// Its attributes, every value as text.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// Start, Unix nanoseconds.
    pub start_ns: u64,
    /// Duration in nanoseconds.
    pub duration_ns: u64,
}

impl Span {
    fn from_otlp(span: &Value) -> Self {
        let mut attributes = std::collections::BTreeMap::new();
        for a in span["attributes"].as_array().into_iter().flatten() {
            let key = a["key"].as_str().unwrap_or_default().to_owned();
            let v = &a["value"];
            let text = v["stringValue"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| v["boolValue"].as_bool().map(|b| b.to_string()))
                .or_else(|| v["intValue"].as_str().map(str::to_owned))
                .or_else(|| v["intValue"].as_i64().map(|i| i.to_string()))
                .unwrap_or_else(|| v.to_string());
            attributes.insert(key, text);
        }
        let nanos = |k: &str| span[k].as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        Self {
            name: span["name"].as_str().unwrap_or_default().to_owned(),
            attributes,
            start_ns: nanos("startTimeUnixNano"),
            duration_ns: nanos("endTimeUnixNano").saturating_sub(nanos("startTimeUnixNano")),
        }
    }
}
