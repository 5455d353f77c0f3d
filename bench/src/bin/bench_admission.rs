//! Benchmark helpers for `make bench-webhook` (bench/webhook.sh); not part of CI.
//!
//! - `certs`: a CA and a serving certificate for 127.0.0.1 (the webhook's own rcgen code).
//! - `api`: the latency of `create Service` through the real API server in three configurations,
//!   interleaved round by round: no admission policy, this webhook registered (a ContractPolicy
//!   requiring gz, sz, hz) and the same rule as a ValidatingAdmissionPolicy + binding. Every object it
//!   creates carries the label `csp-bench-run=<run id>`, and it deletes them all when done.
//! - `server-hist`: p50 / p99 of the webhook's `csp_admission_duration_seconds` histogram between two
//!   scrapes of `/metrics`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::{Parser, Subcommand};
use crds::ContractPolicy;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The label on everything a run creates.
const RUN_LABEL: &str = "csp-bench-run";
/// Selects the namespace under the webhook.
const WEBHOOK_LABEL: &str = "csp-bench-webhook";
/// Selects the namespace under the ValidatingAdmissionPolicy.
const VAP_LABEL: &str = "csp-bench-vap";
const REGIONS_ANNOTATION: &str = "csp.contracts.dev/failover-regions";

#[derive(Debug, Parser)]
#[command(name = "bench_admission", about = "Benchmark helpers for make bench-webhook")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes ca.crt, tls.crt and tls.key for 127.0.0.1 / localhost into a folder.
    Certs {
        /// The folder.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Measures `create Service` through the API server: none vs webhook vs ValidatingAdmissionPolicy.
    Api {
        /// The webhook's /validate URL (https://127.0.0.1:<port>/validate).
        #[arg(long)]
        webhook_url: String,
        /// The CA that signed the webhook's serving certificate (PEM).
        #[arg(long)]
        ca_file: PathBuf,
        /// A name unique to this run: prefixes namespaces and names the policies.
        #[arg(long)]
        run_id: String,
        /// Measured creates per configuration.
        #[arg(long, default_value_t = 500)]
        rounds: usize,
        /// Creates per configuration before measuring (connections, caches, CEL compilation).
        #[arg(long, default_value_t = 30)]
        warmup: usize,
        /// Where to write the results (JSON).
        #[arg(long)]
        json_out: PathBuf,
        /// Where to write the results (a markdown fragment).
        #[arg(long)]
        md_out: PathBuf,
    },
    /// p50 / p99 of `csp_admission_duration_seconds` between two /metrics scrapes; prints JSON.
    ServerHist {
        /// The scrape before the load.
        #[arg(long)]
        before: PathBuf,
        /// The scrape after the load.
        #[arg(long)]
        after: PathBuf,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Certs { dir } => certs(&dir),
        Command::Api { webhook_url, ca_file, run_id, rounds, warmup, json_out, md_out } => {
            let ca = std::fs::read(&ca_file).with_context(|| format!("read {}", ca_file.display()))?;
            let client = Client::try_default().await.context("a Kubernetes client (KUBECONFIG)")?;
            let bench = ApiBench { client, run_id, webhook_url, ca };
            let result = bench.run(rounds, warmup).await;
            bench.cleanup().await;
            let report = result?;
            std::fs::write(&json_out, serde_json::to_string_pretty(&report.json)?)?;
            std::fs::write(&md_out, &report.markdown)?;
            println!("{}", report.markdown);
            Ok(())
        }
        Command::ServerHist { before, after } => {
            let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()));
            let out = server_hist(&read(&before)?, &read(&after)?)?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
    }
}

fn certs(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let (ca, serving) = webhook::certs::ca_and_serving(
        "csp-bench-webhook",
        &["127.0.0.1".into(), "localhost".into()],
        std::time::Duration::from_secs(2 * 86_400),
        std::time::Duration::from_secs(2 * 86_400),
    )?;
    std::fs::write(dir.join("ca.crt"), &ca.cert)?;
    std::fs::write(dir.join("tls.crt"), &serving.cert)?;
    std::fs::write(dir.join("tls.key"), &serving.key)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// create Service through the API server

/// The three configurations, in the order of the tables.
const CONFIGS: [Config; 3] = [Config::None, Config::Webhook, Config::Vap];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    None,
    Webhook,
    Vap,
}

impl Config {
    fn suffix(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Webhook => "webhook",
            Self::Vap => "vap",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::None => "no admission policy",
            Self::Webhook => "webhook (ContractPolicy)",
            Self::Vap => "ValidatingAdmissionPolicy (CEL)",
        }
    }
}

struct ApiBench {
    client: Client,
    run_id: String,
    webhook_url: String,
    ca: Vec<u8>,
}

#[derive(Debug)]
struct Report {
    json: Value,
    markdown: String,
}

fn typed<T: DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).context("build a Kubernetes object")
}

/// A headless Service (no ClusterIP to allocate, so that the API server's own work is the same small
/// amount in every configuration), declaring `regions` when given.
fn service(name: &str, regions: Option<&str>) -> Result<Service> {
    let annotations = regions.map(|r| json!({REGIONS_ANNOTATION: r})).unwrap_or_else(|| json!({}));
    typed(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "csp-bench"},
            "annotations": annotations,
        },
        "spec": {
            "clusterIP": "None",
            "ports": [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}],
            "selector": {"app.kubernetes.io/name": name},
        },
    }))
}

/// Whether an error is the API server refusing the request in admission (not a transport failure).
fn admission_denial(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s) if (400..500).contains(&s.code) => Some(s.message.clone()),
        _ => None,
    }
}

impl std::fmt::Debug for ApiBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiBench").field("run_id", &self.run_id).field("webhook_url", &self.webhook_url).finish()
    }
}

impl ApiBench {
    fn namespace(&self, c: Config) -> String {
        format!("{}-{}", self.run_id, c.suffix())
    }

    fn services(&self, c: Config) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.namespace(c))
    }

    async fn setup(&self) -> Result<()> {
        let pp = PostParams::default();
        let id = &self.run_id;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        for c in CONFIGS {
            let mut labels = json!({RUN_LABEL: id});
            match c {
                Config::None => {}
                Config::Webhook => labels[WEBHOOK_LABEL] = json!(id),
                Config::Vap => labels[VAP_LABEL] = json!(id),
            }
            let ns = typed(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": self.namespace(c), "labels": labels}}))?;
            namespaces.create(&pp, &ns).await.with_context(|| format!("create namespace {}", self.namespace(c)))?;
        }

        let policy: ContractPolicy = typed(json!({
            "apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ContractPolicy",
            "metadata": {"name": format!("{id}-api"), "labels": {RUN_LABEL: id}},
            "spec": {
                "enforcementAction": "Deny",
                "match": {"kinds": ["Service"], "namespaceSelector": {"matchLabels": {WEBHOOK_LABEL: id}}},
                "failover": {"requiredRegions": ["gz", "sz", "hz"]},
            },
        }))?;
        Api::<ContractPolicy>::all(self.client.clone()).create(&pp, &policy).await.context("create ContractPolicy")?;

        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&self.ca);
        let vwc: ValidatingWebhookConfiguration = typed(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": id, "labels": {RUN_LABEL: id}},
            "webhooks": [{
                "name": "validate.csp.contracts.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "timeoutSeconds": 5,
                "clientConfig": {"url": self.webhook_url, "caBundle": ca_bundle},
                "namespaceSelector": {"matchLabels": {WEBHOOK_LABEL: id}},
                "rules": [
                    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                     "resources": ["services"], "scope": "Namespaced"},
                    {"apiGroups": ["csp.contracts.dev"], "apiVersions": ["v1alpha1"], "operations": ["CREATE", "UPDATE"],
                     "resources": ["channelcontracts"], "scope": "Namespaced"},
                ],
            }],
        }))?;
        Api::<ValidatingWebhookConfiguration>::all(self.client.clone())
            .create(&pp, &vwc)
            .await
            .context("create ValidatingWebhookConfiguration")?;

        // The same rule in CEL: the annotation, split on ',' and trimmed, holds gz, sz and hz.
        let vap: ValidatingAdmissionPolicy = typed(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": id, "labels": {RUN_LABEL: id}},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                    "resources": ["services"],
                }]},
                "variables": [{
                    "name": "regions",
                    "expression": format!(
                        "has(object.metadata.annotations) && '{REGIONS_ANNOTATION}' in object.metadata.annotations \
                         ? object.metadata.annotations['{REGIONS_ANNOTATION}'].split(',').map(r, r.trim()) : []"
                    ),
                }],
                "validations": [{
                    "expression": "['gz', 'sz', 'hz'].all(r, r in variables.regions)",
                    "message": format!("missing failover regions: required [gz, sz, hz]; declare them with annotation {REGIONS_ANNOTATION}=\"gz,sz,hz\""),
                    "reason": "Forbidden",
                }],
            },
        }))?;
        Api::<ValidatingAdmissionPolicy>::all(self.client.clone())
            .create(&pp, &vap)
            .await
            .context("create ValidatingAdmissionPolicy")?;
        let binding: ValidatingAdmissionPolicyBinding = typed(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": id, "labels": {RUN_LABEL: id}},
            "spec": {
                "policyName": id,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {VAP_LABEL: id}}},
            },
        }))?;
        Api::<ValidatingAdmissionPolicyBinding>::all(self.client.clone())
            .create(&pp, &binding)
            .await
            .context("create ValidatingAdmissionPolicyBinding")?;
        Ok(())
    }

    /// Waits until the webhook and the VAP both deny a Service without the regions (dry run), and checks
    /// that every configuration admits the compliant one.
    async fn wait_until_enforced(&self) -> Result<()> {
        let dry = PostParams { dry_run: true, field_manager: None };
        let bad = service("probe-missing-regions", Some("gz, sz"))?;
        let good = service("probe-compliant", Some("gz, sz, hz"))?;
        let start = Instant::now();
        for c in [Config::Webhook, Config::Vap] {
            loop {
                match self.services(c).create(&dry, &bad).await {
                    Err(e) if admission_denial(&e).is_some_and(|m| m.contains("missing failover regions")) => break,
                    Err(e) if admission_denial(&e).is_none() => return Err(e).context("dry-run create"),
                    _ if start.elapsed() > Duration::from_secs(60) => {
                        bail!("the {} did not start denying within 60 s", c.title())
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        self.services(Config::None)
            .create(&dry, &bad)
            .await
            .context("with no policy, a Service without the regions is admitted")?;
        for c in CONFIGS {
            self.services(c)
                .create(&dry, &good)
                .await
                .with_context(|| format!("the compliant Service is admitted ({})", c.title()))?;
        }
        Ok(())
    }

    async fn run(&self, rounds: usize, warmup: usize) -> Result<Report> {
        eprintln!("[bench_admission] setting up namespaces, ContractPolicy, VWC, VAP + binding for {}", self.run_id);
        self.setup().await?;
        self.wait_until_enforced().await?;
        let pp = PostParams::default();
        eprintln!("[bench_admission] warm-up: {warmup} creates per configuration");
        for i in 0..warmup {
            for c in CONFIGS {
                self.services(c).create(&pp, &service(&format!("warm-{i}"), Some("gz,sz,hz"))?).await?;
            }
        }
        eprintln!("[bench_admission] measuring: {rounds} rounds, each creates one Service in every configuration");
        let apis: Vec<Api<Service>> = CONFIGS.iter().map(|c| self.services(*c)).collect();
        let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); CONFIGS.len()];
        // All six orders in turn, so that no configuration always goes first or follows another.
        const ORDERS: [[usize; 3]; 6] = [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 2, 1], [2, 1, 0], [1, 0, 2]];
        let started = Instant::now();
        for round in 0..rounds {
            for &c in &ORDERS[round % ORDERS.len()] {
                let svc = service(&format!("svc-{round}"), Some("gz, sz, hz"))?;
                let t = Instant::now();
                apis[c]
                    .create(&pp, &svc)
                    .await
                    .with_context(|| format!("create svc-{round} ({})", CONFIGS[c].title()))?;
                samples[c].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let wall = started.elapsed();
        Ok(report(&self.run_id, rounds, warmup, wall, &samples))
    }

    /// Deletes everything the run created (the namespaces take their Services with them).
    async fn cleanup(&self) {
        let dp = DeleteParams::background();
        let id = &self.run_id;
        let _ = Api::<ValidatingWebhookConfiguration>::all(self.client.clone()).delete(id, &dp).await;
        let _ = Api::<ValidatingAdmissionPolicyBinding>::all(self.client.clone()).delete(id, &dp).await;
        let _ = Api::<ValidatingAdmissionPolicy>::all(self.client.clone()).delete(id, &dp).await;
        let _ = Api::<ContractPolicy>::all(self.client.clone()).delete(&format!("{id}-api"), &dp).await;
        for c in CONFIGS {
            let _ = Api::<Namespace>::all(self.client.clone()).delete(&self.namespace(c), &dp).await;
        }
        eprintln!("[bench_admission] deleted the VWC, VAP, binding, ContractPolicy and namespaces of {id}");
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

fn stats(v: &[f64]) -> Stats {
    let s = sorted(v);
    Stats {
        p50: percentile(&s, 50.0),
        p90: percentile(&s, 90.0),
        p99: percentile(&s, 99.0),
        mean: s.iter().sum::<f64>() / s.len().max(1) as f64,
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then_some(a / b)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a (the VAP adds nothing measurable)".to_owned(), |r| format!("{r:.2}x"))
}

/// Bootstrap resamples for the confidence intervals.
const RESAMPLES: usize = 2000;

/// A 95% bootstrap interval of `percentile(config c, q) - percentile(no policy, q)`, the rounds
/// resampled jointly (each round's creates ran back to back under the same machine load).
fn bootstrap(samples: &[Vec<f64>], c: usize, q: f64) -> (f64, f64) {
    let n = samples[0].len().min(samples[c].len());
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    // xorshift64: deterministic, no dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut diffs = Vec::with_capacity(RESAMPLES);
    for _ in 0..RESAMPLES {
        a.clear();
        b.clear();
        for _ in 0..n {
            let i = (next() % n as u64) as usize;
            a.push(samples[c][i]);
            b.push(samples[0][i]);
        }
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        diffs.push(percentile(&a, q) - percentile(&b, q));
    }
    diffs.sort_by(f64::total_cmp);
    (percentile(&diffs, 2.5), percentile(&diffs, 97.5))
}

fn report(run_id: &str, rounds: usize, warmup: usize, wall: Duration, samples: &[Vec<f64>]) -> Report {
    let st: Vec<Stats> = samples.iter().map(|s| stats(s)).collect();
    let base = st[0];
    let added = |c: usize| (st[c].p50 - base.p50, st[c].p99 - base.p99);
    let ci50: Vec<(f64, f64)> = (0..CONFIGS.len()).map(|c| bootstrap(samples, c, 50.0)).collect();
    let ci99: Vec<(f64, f64)> = (0..CONFIGS.len()).map(|c| bootstrap(samples, c, 99.0)).collect();
    let (w50, w99) = added(1);
    let (v50, v99) = added(2);

    let mut md = String::new();
    md.push_str(&format!(
        "`create Service` through the real API server; the Service is headless and **compliant** (annotation \
         `{REGIONS_ANNOTATION}: \"gz, sz, hz\"`), so every configuration admits it. {rounds} measured creates per \
         configuration after {warmup} warm-up creates, interleaved round by round (the order rotates through all \
         six permutations), sequential on one client connection (kube-rs, release build); {:.1} s in all. \
         \"Added\" = this configuration minus no policy, with a 95% bootstrap interval (rounds resampled \
         jointly).\n\n",
        wall.as_secs_f64()
    ));
    md.push_str("| configuration | median (ms) | p90 (ms) | p99 (ms) | mean (ms) | added median (ms) [95% CI] | added p99 (ms) [95% CI] |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for (i, c) in CONFIGS.iter().enumerate() {
        let s = st[i];
        let (a50, a99) = if i == 0 {
            ("—".to_owned(), "—".to_owned())
        } else {
            let (a50, a99) = added(i);
            (
                format!("{a50:+.3} [{:+.3}, {:+.3}]", ci50[i].0, ci50[i].1),
                format!("{a99:+.3} [{:+.3}, {:+.3}]", ci99[i].0, ci99[i].1),
            )
        };
        md.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {a50} | {a99} |\n",
            c.title(),
            s.p50,
            s.p90,
            s.p99,
            s.mean
        ));
    }
    let r50 = ratio(w50, v50);
    let r99 = ratio(w99, v99);
    md.push_str(&format!(
        "\nWebhook's added latency / VAP's added latency: median {w50:+.3} / {v50:+.3} ms → **{}**; \
         p99 {w99:+.3} / {v99:+.3} ms → **{}**.\n\n",
        fmt_ratio(r50),
        fmt_ratio(r99),
    ));
    let met = r50.is_some_and(|r| r <= 1.5) && r99.is_some_and(|r| r <= 1.5);
    let vap_is_noise = ci50[2].0 <= 0.0;
    md.push_str(&if met {
        "Target (the webhook's added latency within 1.5x of the VAP's, median and p99): **met**.\n".to_owned()
    } else if vap_is_noise {
        format!(
            "Target (the webhook's added latency within 1.5x of the VAP's): **not met**. The VAP's added median is \
             indistinguishable from zero (95% CI [{:+.3}, {:+.3}] ms: in-process CEL costs microseconds), while \
             the webhook's call out of the API server adds {w50:+.3} ms [{:+.3}, {:+.3}]; against a zero \
             denominator no out-of-process webhook can be within 1.5x.\n",
            ci50[2].0, ci50[2].1, ci50[1].0, ci50[1].1
        )
    } else {
        format!(
            "Target (the webhook's added latency within 1.5x of the VAP's, median and p99): **not met** (median \
             {}, p99 {}).\n",
            fmt_ratio(r50),
            fmt_ratio(r99)
        )
    });

    let cfg_json = |i: usize| {
        let s = st[i];
        json!({"p50_ms": s.p50, "p90_ms": s.p90, "p99_ms": s.p99, "mean_ms": s.mean, "n": samples[i].len()})
    };
    let added_json = |i: usize| {
        let (a50, a99) = added(i);
        json!({"p50_ms": a50, "p50_ci95_ms": [ci50[i].0, ci50[i].1], "p99_ms": a99, "p99_ci95_ms": [ci99[i].0, ci99[i].1]})
    };
    let json = json!({
        "run_id": run_id, "rounds": rounds, "warmup": warmup, "wall_seconds": wall.as_secs_f64(),
        "service": "headless, compliant (annotation gz, sz, hz)",
        "none": cfg_json(0), "webhook": cfg_json(1), "vap": cfg_json(2),
        "webhook_added": added_json(1), "vap_added": added_json(2),
        "ratio": {"p50": r50, "p99": r99}, "target_met": met,
        "samples_ms": {"none": samples[0], "webhook": samples[1], "vap": samples[2]},
    });
    Report { json, markdown: md }
}

// ---------------------------------------------------------------------------------------------------
// the webhook's own histogram

const HISTOGRAM: &str = "csp_admission_duration_seconds";

/// One scrape of the histogram.
#[derive(Debug)]
struct Scrape {
    /// (upper bound in seconds, cumulative count) of every bucket, by bound.
    buckets: Vec<(f64, f64)>,
    count: f64,
    sum: f64,
}

fn scrape(text: &str) -> Result<Scrape> {
    let mut out = Vec::new();
    let (mut count, mut sum) = (f64::NAN, f64::NAN);
    let bucket = format!("{HISTOGRAM}_bucket{{le=\"");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&bucket) {
            let (le, value) = rest.split_once("\"}").context("a bucket line")?;
            let le = if le.contains("Inf") { f64::INFINITY } else { le.parse()? };
            out.push((le, value.trim().parse()?));
        } else if let Some(v) = line.strip_prefix(&format!("{HISTOGRAM}_count ")) {
            count = v.trim().parse()?;
        } else if let Some(v) = line.strip_prefix(&format!("{HISTOGRAM}_sum ")) {
            sum = v.trim().parse()?;
        }
    }
    if out.is_empty() {
        bail!("no {HISTOGRAM} buckets in the scrape");
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(Scrape { buckets: out, count, sum })
}

/// The quantile, linearly interpolated inside its bucket, and the bucket's bounds (seconds).
fn quantile(delta: &[(f64, f64)], total: f64, q: f64) -> (f64, f64, f64) {
    let target = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for &(le, cum) in delta {
        if cum >= target {
            if le.is_infinite() {
                return (lower, lower, le);
            }
            let inside = cum - below;
            let frac = if inside > 0.0 { (target - below) / inside } else { 1.0 };
            return (lower + (le - lower) * frac, lower, le);
        }
        lower = le;
        below = cum;
    }
    (f64::NAN, f64::NAN, f64::NAN)
}

fn server_hist(before: &str, after: &str) -> Result<Value> {
    let (b, a) = (scrape(before)?, scrape(after)?);
    if a.buckets.len() != b.buckets.len() {
        bail!("the two scrapes have different buckets");
    }
    let delta: Vec<(f64, f64)> = a.buckets.iter().zip(&b.buckets).map(|((le, x), (_, y))| (*le, x - y)).collect();
    let total = a.count - b.count;
    let q = |p: f64| {
        let (v, lo, hi) = quantile(&delta, total, p);
        json!({"us": v * 1e6, "bucket_us": [lo * 1e6, hi * 1e6]})
    };
    Ok(json!({
        "count": total,
        "mean_us": if total > 0.0 { (a.sum - b.sum) / total * 1e6 } else { f64::NAN },
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "p999": q(0.999),
        "buckets_us": delta.iter().map(|(le, n)| json!([le * 1e6, n])).collect::<Vec<_>>(),
    }))
}
