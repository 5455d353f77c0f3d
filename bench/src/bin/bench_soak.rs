//! `make soak` (bench/soak.sh): the operator and the webhook under a steady churn for a long time (30
//! minutes by default), on a control plane of their own; their memory and open files are sampled every
//! few seconds and their error counters and log levels counted, and the report says whether they stay flat.
//!
//! The stage: the CRDs and the chart's RBAC; the release operator (`--publish configmap,xds`, xDS over TLS)
//! as the chart's operator ServiceAccount, with two real Envoys fed over delta ADS; the release webhook as
//! the chart's webhook ServiceAccount, registered by a ValidatingWebhookConfiguration (failurePolicy Fail)
//! for the soak's namespaces only (label `csp-soak=true`); a Deny ContractPolicy on them.
//!
//! The churn, one tick a second: the slots (Service + EndpointSlice + ChannelContract) of both namespaces
//! in turn are created, get new endpoints twice, a contract and Service edit, and are deleted; every 4th
//! tick a Service without failover regions is created and must be denied; every 30th the policy is edited
//! (the webhook's audit runs on it). Every admission goes through the webhook.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use channel_contracts_bench::log;
use clap::Parser;
use e2e::chaos::{Build, Operator, ProxyBed, Webhook};
use e2e::fleet::ControlPlane;
use e2e::{curl, rbac, wait_until};
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde::Serialize;
use serde_json::{Value, json};

const PROXIED: &str = "soak-proxied";
const PLAIN: &str = "soak-plain";
const POLICY: &str = "soak-baseline";
const MANAGER: &str = "csp-soak";
/// Words that make a counter an error counter (in its name or labels).
const ERROR_WORDS: [&str; 7] = ["error", "fail", "bad_request", "reject", "restart", "timeout", "panic"];
/// "flat": below these slopes, after the warm-up.
const FLAT_RSS_MIB_PER_HOUR: f64 = 5.0;
const FLAT_FDS_PER_HOUR: f64 = 10.0;

#[derive(Parser, Debug)]
#[command(about = "make soak: operator and webhook under churn, memory and file descriptors sampled")]
struct Args {
    /// How long the churn runs.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// The first minutes left out of the slopes (default: 3, or a fifth of a run shorter than 15 minutes).
    #[arg(long)]
    warmup_minutes: Option<f64>,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// Slots (Service + EndpointSlice + ChannelContract) per namespace.
    #[arg(long, default_value_t = 15)]
    slots: usize,
    /// The control plane's folder (`CSP_RUN_DIR` of e2e/cluster.sh).
    #[arg(long)]
    control_plane_dir: PathBuf,
    /// Logs, certificates, kubeconfigs.
    #[arg(long)]
    work_dir: PathBuf,
    #[arg(long)]
    operator_bin: PathBuf,
    #[arg(long)]
    webhook_bin: PathBuf,
    #[arg(long, default_value = "?")]
    commit: String,
    #[arg(long)]
    json_out: PathBuf,
    #[arg(long)]
    md_out: PathBuf,
}

/// One reading of a process.
#[derive(Debug, Clone, Default, Serialize)]
struct Reading {
    rss_mib: f64,
    fds: f64,
    /// Error counters of its /metrics (series exactly as exposed -> value).
    errors: BTreeMap<String, f64>,
    log_warn: u64,
    log_error: u64,
    running: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Sample {
    /// Seconds since the churn started.
    t: f64,
    operator: Reading,
    webhook: Reading,
    envoys_rss_mib: Vec<f64>,
    ops: u64,
}

/// What became of the operations of one kind.
#[derive(Debug, Clone, Default, Serialize)]
struct OpCount {
    ok: u64,
    /// Refused by the webhook, as intended (non-compliant Services).
    denied: u64,
    /// Anything else: refused when it should not have been, webhook unreachable, API errors.
    failed: u64,
}

#[derive(Debug, Default)]
struct Churn {
    ops: BTreeMap<&'static str, OpCount>,
    failures: Vec<String>,
}

impl Churn {
    fn total(&self) -> u64 {
        self.ops.values().map(|c| c.ok + c.denied + c.failed).sum()
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work_dir)?;
    let warmup = args.warmup_minutes.unwrap_or(if args.minutes >= 15.0 { 3.0 } else { args.minutes / 5.0 });

    log("soak", format!("starting a control plane in {}", args.control_plane_dir.display()));
    let mut cp = ControlPlane::start_in("soak", args.control_plane_dir.clone(), false);
    cp.install(&[]);
    let dir = &args.work_dir;

    // Namespaces, Nodes per region, the proxies' network namespace.
    let mut bed = ProxyBed::new(&cp, PROXIED, dir);
    cp.namespace(PLAIN, &["csp-soak=true"]);
    cp.kubectl(&["label", "namespace", PROXIED, "csp-soak=true", "--overwrite"], None).ok();

    let certs_dir = dir.join("xds-certs");
    std::fs::create_dir_all(&certs_dir)?;
    let certs = e2e::xds::write_certs(&certs_dir);
    let operator_kubeconfig = service_account(&cp, dir, &rbac::operator_service_account());
    let mut operator = Operator::start_build(
        &release(&args.operator_bin),
        &operator_kubeconfig,
        dir,
        "operator",
        "configmap,xds",
        Some(&certs),
        &[],
    );
    log("soak", format!("operator ready (pid {:?}, admin {})", operator.process.process.pid, operator.admin_port));
    bed.proxy(&operator, &certs.ca, "envoy-1", 2);
    bed.proxy(&operator, &certs.ca, "envoy-2", 3);

    let webhook_kubeconfig = service_account(&cp, dir, &rbac::webhook_service_account());
    let mut webhook = Webhook::start_build(&release(&args.webhook_bin), &webhook_kubeconfig, dir, "30s");
    log("soak", format!("webhook ready (pid {:?}, port {})", webhook.process.process.pid, webhook.port));
    cp.kubectl(&["apply", "-f", "-"], Some(&policy(true))).ok();
    cp.kubectl(&["apply", "-f", "-"], Some(&registration(&webhook.url("/validate"), &webhook.ca_file)?)).ok();
    // The webhook is in the path once a Service without failover regions is refused.
    wait_until("the webhook to deny a non-compliant Service", Duration::from_secs(60), || {
        let r = cp.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&non_compliant_service(PLAIN, "probe")));
        (!r.success && r.stderr.contains("denied the request")).then_some(())
    });
    log("soak", "the webhook denies non-compliant Services: churn starts");

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let client = runtime.block_on(client(&cp.kubeconfig()))?;
    let churn = Arc::new(Mutex::new(Churn::default()));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    let probe = Probe {
        operator_pid: operator.process.process.pid.context("the operator's pid")?,
        operator_log: operator.process.process.log.clone(),
        operator_metrics: format!("http://127.0.0.1:{}/metrics", operator.admin_port),
        webhook_pid: webhook.process.process.pid.context("the webhook's pid")?,
        webhook_log: webhook.process.process.log.clone(),
        webhook_metrics: webhook.url("/metrics"),
        webhook_ca: webhook.ca_file.to_string_lossy().into_owned(),
        envoy_pids: bed.proxies.iter().filter_map(|p| p.process.pid).collect(),
    };
    let sampler = {
        let (churn, samples, stop) = (churn.clone(), samples.clone(), stop.clone());
        let every = Duration::from_secs(args.sample_secs);
        std::thread::spawn(move || {
            loop {
                let ops = churn.lock().unwrap_or_else(PoisonError::into_inner).total();
                let sample = probe.sample(started.elapsed().as_secs_f64(), ops);
                let line = format!(
                    "t={:>5.0}s ops={:>5} operator {:.1} MiB {} fds | webhook {:.1} MiB {} fds",
                    sample.t,
                    ops,
                    sample.operator.rss_mib,
                    sample.operator.fds,
                    sample.webhook.rss_mib,
                    sample.webhook.fds
                );
                samples.lock().unwrap_or_else(PoisonError::into_inner).push(sample);
                log("soak", line);
                let next = started + every * samples.lock().unwrap_or_else(PoisonError::into_inner).len() as u32;
                while Instant::now() < next {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        })
    };

    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    runtime.block_on(run_churn(client, args.slots, duration, churn.clone()));
    stop.store(true, Ordering::Relaxed);
    sampler.join().map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    // A last reading after the churn, with the stage intact.
    let last = {
        let ops = churn.lock().unwrap_or_else(PoisonError::into_inner).total();
        let mut last = probe_again(&operator, &webhook, &bed).sample(started.elapsed().as_secs_f64(), ops);
        last.operator.running = operator.process.process.running();
        last.webhook.running = webhook.process.process.running();
        last
    };
    samples.lock().unwrap_or_else(PoisonError::into_inner).push(last);
    let elapsed = started.elapsed();

    let churn = std::mem::take(&mut *churn.lock().unwrap_or_else(PoisonError::into_inner));
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(PoisonError::into_inner));
    let report = Report::new(&args, warmup, elapsed, churn, samples);
    std::fs::write(&args.json_out, serde_json::to_string_pretty(&report)?)?;
    std::fs::write(&args.md_out, report.markdown())?;
    log("soak", format!("verdict: {}; {}", report.verdict, report.error_verdict));

    operator.process.stop();
    webhook.process.stop();
    drop(bed);
    cp.stop();
    Ok(())
}

fn service_account(cp: &ControlPlane, dir: &Path, service_account: &str) -> PathBuf {
    let path = dir.join(format!("{service_account}.kubeconfig"));
    let text = rbac::service_account_kubeconfig(&cp.kubeconfig(), rbac::NAMESPACE, service_account);
    rbac::write_private(&path, &text);
    path
}

/// A release binary of the soak, logging at info.
fn release(bin: &Path) -> Build {
    Build { bin: bin.to_path_buf(), log_filter: "info,kube=warn".into() }
}

/// The soak's ValidatingWebhookConfiguration: the chart's rules, failurePolicy Fail, the soak's namespaces.
fn registration(url: &str, ca_file: &Path) -> Result<String> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(std::fs::read(ca_file)?);
    Ok(format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: csp-soak}}
webhooks:
- name: validate.csp.contracts.dev
  admissionReviewVersions: ["v1"]
  clientConfig: {{url: "{url}", caBundle: {ca}}}
  failurePolicy: Fail
  matchPolicy: Equivalent
  sideEffects: None
  timeoutSeconds: 10
  namespaceSelector: {{matchLabels: {{csp-soak: "true"}}}}
  rules:
  - {{apiGroups: [""], apiVersions: ["v1"], resources: ["services"], operations: ["CREATE", "UPDATE"], scope: Namespaced}}
  - {{apiGroups: ["csp.contracts.dev"], apiVersions: ["v1alpha1"], resources: ["channelcontracts"], operations: ["CREATE", "UPDATE"], scope: Namespaced}}
"#
    ))
}

/// The soak's Deny policy; `wide` requires gz, sz and hz, else gz and sz (both met by the soak's Services).
fn policy(wide: bool) -> String {
    let regions = if wide { "[gz, sz, hz]" } else { "[gz, sz]" };
    format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {POLICY}}}\nspec:\n  enforcementAction: Deny\n  match:\n    namespaceSelector: {{matchLabels: {{csp-soak: \"true\"}}}}\n  failover:\n    requiredRegions: {regions}\n"
    )
}

fn non_compliant_service(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  ports: [{{name: http, port: 8080, targetPort: 8080}}]\n"
    )
}

async fn client(kubeconfig: &Path) -> Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(Client::try_from(config)?)
}

/// The APIs the churn writes to.
struct Apis {
    client: Client,
    services: ApiResource,
    slices: ApiResource,
    contracts: ApiResource,
    policies: ApiResource,
}

impl Apis {
    fn new(client: Client) -> Self {
        let ar =
            |g: &str, v: &str, k: &str, p: &str| ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), p);
        Self {
            client,
            services: ar("", "v1", "Service", "services"),
            slices: ar("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
            contracts: ar("csp.contracts.dev", "v1alpha1", "ChannelContract", "channelcontracts"),
            policies: ar("csp.contracts.dev", "v1alpha1", "ContractPolicy", "contractpolicies"),
        }
    }

    fn api(&self, ar: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        }
    }
}

/// How an operation ended.
enum Outcome {
    Ok,
    Denied,
    Failed(String),
}

fn outcome<T>(r: Result<T, kube::Error>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok,
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("denied the request") => Outcome::Denied,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

fn record(churn: &Mutex<Churn>, op: &'static str, outcome: Outcome, expect_denied: bool, elapsed: f64) {
    let mut c = churn.lock().unwrap_or_else(PoisonError::into_inner);
    let failure = match outcome {
        Outcome::Ok if expect_denied => Some("admitted, should have been denied".to_owned()),
        Outcome::Ok => None,
        Outcome::Denied if expect_denied => None,
        Outcome::Denied => Some("denied".to_owned()),
        Outcome::Failed(e) => Some(e),
    };
    let count = c.ops.entry(op).or_default();
    match (&failure, expect_denied) {
        (None, false) => count.ok += 1,
        (None, true) => count.denied += 1,
        (Some(_), _) => count.failed += 1,
    }
    if let Some(f) = failure
        && c.failures.len() < 50
    {
        c.failures.push(format!("t={elapsed:.0}s {op}: {f}"));
    }
}

fn object(v: Value) -> DynamicObject {
    serde_json::from_value(v).expect("a well-formed object")
}

fn service(ns: &str, name: &str, revision: u64) -> DynamicObject {
    object(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"csp-soak-revision": revision.to_string()},
                     "annotations": {"csp.contracts.dev/failover-regions": "gz,sz,hz"}},
        "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}
    }))
}

fn slice(ns: &str, name: &str, slot: usize, revision: u64) -> DynamicObject {
    let endpoints: Vec<Value> = ["gz", "sz", "hz"]
        .iter()
        .enumerate()
        .map(|(k, region)| {
            json!({
                "addresses": [format!("10.{}.{}.{}", 20 + slot / 250, slot % 250, (revision as usize * 3 + k) % 250 + 1)],
                "conditions": {"ready": true},
                "nodeName": format!("{PROXIED}-{region}"),
            })
        })
        .collect();
    object(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-1"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
}

fn contract(ns: &str, name: &str, revision: u64) -> DynamicObject {
    object(json!({
        "apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ChannelContract",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"service": name, "port": 8080, "sla": {"maxLatency": format!("{}ms", 100 + revision % 50)},
                 "failover": {"regions": ["gz", "sz", "hz"]}}
    }))
}

/// One tick a second until `duration`: see the module's documentation.
async fn run_churn(client: Client, slots: usize, duration: Duration, churn: Arc<Mutex<Churn>>) {
    let apis = Apis::new(client);
    let started = Instant::now();
    let mut state: Vec<Option<u64>> = vec![None; 2 * slots];
    let mut wide = true;
    let pp = PostParams::default();
    let apply = PatchParams::apply(MANAGER).force();
    let mut tick: u64 = 0;
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while started.elapsed() < duration {
        interval.tick().await;
        let t = started.elapsed().as_secs_f64();
        let slot = (tick as usize) % state.len();
        let ns = if slot < slots { PROXIED } else { PLAIN };
        let name = format!("svc-{}", slot % slots);
        let (services, slices, contracts) =
            (apis.api(&apis.services, Some(ns)), apis.api(&apis.slices, Some(ns)), apis.api(&apis.contracts, Some(ns)));
        match state[slot] {
            None => {
                record(&churn, "service create", outcome(services.create(&pp, &service(ns, &name, 0)).await), false, t);
                record(
                    &churn,
                    "endpointslice create",
                    outcome(slices.create(&pp, &slice(ns, &name, slot, 0)).await),
                    false,
                    t,
                );
                record(
                    &churn,
                    "contract create",
                    outcome(contracts.create(&pp, &contract(ns, &name, 0)).await),
                    false,
                    t,
                );
                state[slot] = Some(1);
            }
            Some(revision) => match revision % 4 {
                1 | 2 => {
                    let r = slices
                        .patch(&format!("{name}-1"), &apply, &Patch::Apply(slice(ns, &name, slot, revision)))
                        .await;
                    record(&churn, "endpointslice update", outcome(r), false, t);
                    state[slot] = Some(revision + 1);
                }
                3 => {
                    let r = contracts.patch(&name, &apply, &Patch::Apply(contract(ns, &name, revision))).await;
                    record(&churn, "contract update", outcome(r), false, t);
                    let r = services.patch(&name, &apply, &Patch::Apply(service(ns, &name, revision))).await;
                    record(&churn, "service update", outcome(r), false, t);
                    state[slot] = Some(revision + 1);
                }
                _ => {
                    let dp = DeleteParams::default();
                    record(&churn, "contract delete", outcome(contracts.delete(&name, &dp).await), false, t);
                    record(
                        &churn,
                        "endpointslice delete",
                        outcome(slices.delete(&format!("{name}-1"), &dp).await),
                        false,
                        t,
                    );
                    record(&churn, "service delete", outcome(services.delete(&name, &dp).await), false, t);
                    state[slot] = None;
                }
            },
        }
        if tick % 4 == 3 {
            let bad = bad_service(ns, &format!("bad-{tick}"));
            record(&churn, "non-compliant service create", outcome(services.create(&pp, &bad).await), true, t);
        }
        if tick % 30 == 29 {
            wide = !wide;
            let policies = apis.api(&apis.policies, None);
            let regions = if wide { json!(["gz", "sz", "hz"]) } else { json!(["gz", "sz"]) };
            let p = object(json!({
                "apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ContractPolicy",
                "metadata": {"name": POLICY},
                "spec": {"enforcementAction": "Deny", "match": {"namespaceSelector": {"matchLabels": {"csp-soak": "true"}}},
                         "failover": {"requiredRegions": regions}}
            }));
            record(&churn, "policy edit", outcome(policies.patch(POLICY, &apply, &Patch::Apply(p)).await), false, t);
        }
        tick += 1;
    }
}

/// A Service that declares no failover regions (the policy denies it).
fn bad_service(ns: &str, name: &str) -> DynamicObject {
    object(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}
    }))
}

/// Where the readings come from.
struct Probe {
    operator_pid: u32,
    operator_log: PathBuf,
    operator_metrics: String,
    webhook_pid: u32,
    webhook_log: PathBuf,
    webhook_metrics: String,
    webhook_ca: String,
    envoy_pids: Vec<u32>,
}

fn probe_again(operator: &Operator, webhook: &Webhook, bed: &ProxyBed) -> Probe {
    Probe {
        operator_pid: operator.process.process.pid.unwrap_or(0),
        operator_log: operator.process.process.log.clone(),
        operator_metrics: format!("http://127.0.0.1:{}/metrics", operator.admin_port),
        webhook_pid: webhook.process.process.pid.unwrap_or(0),
        webhook_log: webhook.process.process.log.clone(),
        webhook_metrics: webhook.url("/metrics"),
        webhook_ca: webhook.ca_file.to_string_lossy().into_owned(),
        envoy_pids: bed.proxies.iter().filter_map(|p| p.process.pid).collect(),
    }
}

impl Probe {
    fn sample(&self, t: f64, ops: u64) -> Sample {
        let operator = read(self.operator_pid, &self.operator_log, &curl(&[&self.operator_metrics]).1);
        let webhook =
            read(self.webhook_pid, &self.webhook_log, &curl(&["--cacert", &self.webhook_ca, &self.webhook_metrics]).1);
        let envoys_rss_mib = self
            .envoy_pids
            .iter()
            .map(|pid| channel_contracts_bench::process::status_mib(*pid, "VmRSS:").unwrap_or(f64::NAN))
            .collect();
        Sample { t, operator, webhook, envoys_rss_mib, ops }
    }
}

fn read(pid: u32, log_file: &Path, metrics: &str) -> Reading {
    let rss = channel_contracts_bench::process::status_mib(pid, "VmRSS:");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as f64).ok();
    let (log_warn, log_error) = levels(&std::fs::read_to_string(log_file).unwrap_or_default());
    Reading {
        rss_mib: rss.unwrap_or(f64::NAN),
        fds: fds.unwrap_or(f64::NAN),
        errors: error_counters(metrics),
        log_warn,
        log_error,
        running: rss.is_some(),
    }
}

/// Counters (`*_total`) whose name or labels say error, failure, rejection, restart or timeout.
fn error_counters(metrics: &str) -> BTreeMap<String, f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            let is_counter = name.ends_with("_total");
            let lower = series.to_ascii_lowercase();
            (is_counter && ERROR_WORDS.iter().any(|w| lower.contains(w)))
                .then(|| Some((series.to_owned(), value.parse().ok()?)))?
        })
        .collect()
}

/// WARN and ERROR lines of a text-format log (the level is among the first words; ANSI colours removed).
fn levels(log: &str) -> (u64, u64) {
    let (mut warn, mut error) = (0, 0);
    for line in log.lines() {
        let plain: String = strip_ansi(line);
        let level = plain.split_whitespace().take(3).find(|w| ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(w));
        match level {
            Some("WARN") => warn += 1,
            Some("ERROR") => error += 1,
            _ => {}
        }
    }
    (warn, error)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Least-squares slope of `(t seconds, y)`, per hour.
fn slope_per_hour(points: &[(f64, f64)]) -> f64 {
    let points: Vec<(f64, f64)> = points.iter().copied().filter(|(_, y)| y.is_finite()).collect();
    let n = points.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (mt, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = points.iter().map(|(t, y)| (t - mt) * (y - my)).sum();
    let sxx: f64 = points.iter().map(|(t, _)| (t - mt) * (t - mt)).sum();
    if sxx == 0.0 { f64::NAN } else { sxy / sxx * 3600.0 }
}

#[derive(Debug, Serialize)]
struct Series {
    start: f64,
    end: f64,
    max: f64,
    /// Start of the fitted window (the first sample after the warm-up).
    after_warmup: f64,
    slope_per_hour: f64,
}

fn series(samples: &[Sample], warmup_s: f64, f: impl Fn(&Sample) -> f64) -> Series {
    let all: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, f(s))).collect();
    let fitted: Vec<(f64, f64)> = all.iter().copied().filter(|(t, _)| *t >= warmup_s).collect();
    Series {
        start: all.first().map_or(f64::NAN, |p| p.1),
        end: all.last().map_or(f64::NAN, |p| p.1),
        max: all.iter().map(|p| p.1).fold(f64::NAN, f64::max),
        after_warmup: fitted.first().map_or(f64::NAN, |p| p.1),
        slope_per_hour: slope_per_hour(&fitted),
    }
}

#[derive(Debug, Serialize)]
struct ProcessReport {
    rss_mib: Series,
    fds: Series,
    /// Error counters at the start, after the warm-up and at the end (absent: 0).
    errors: BTreeMap<String, [f64; 3]>,
    log_warn: [u64; 3],
    log_error: [u64; 3],
    running_at_end: bool,
    flat: bool,
    errors_grew: bool,
}

impl ProcessReport {
    fn new(samples: &[Sample], warmup_s: f64, pick: impl Fn(&Sample) -> &Reading) -> Self {
        let rss_mib = series(samples, warmup_s, |s| pick(s).rss_mib);
        let fds = series(samples, warmup_s, |s| pick(s).fds);
        let first = samples.first().map(&pick).cloned().unwrap_or_default();
        let warm = samples.iter().find(|s| s.t >= warmup_s).map(&pick).cloned().unwrap_or_default();
        let last = samples.last().map(&pick).cloned().unwrap_or_default();
        let mut names: Vec<&String> = first.errors.keys().chain(warm.errors.keys()).chain(last.errors.keys()).collect();
        names.sort();
        names.dedup();
        let get = |r: &Reading, n: &str| r.errors.get(n).copied().unwrap_or(0.0);
        let errors: BTreeMap<String, [f64; 3]> =
            names.iter().map(|n| ((*n).clone(), [get(&first, n), get(&warm, n), get(&last, n)])).collect();
        let errors_grew = errors.values().any(|[_, w, e]| e > w) || last.log_error > warm.log_error;
        let flat = rss_mib.slope_per_hour.abs() < FLAT_RSS_MIB_PER_HOUR && fds.slope_per_hour.abs() < FLAT_FDS_PER_HOUR;
        Self {
            rss_mib,
            fds,
            errors,
            log_warn: [first.log_warn, warm.log_warn, last.log_warn],
            log_error: [first.log_error, warm.log_error, last.log_error],
            running_at_end: last.running,
            flat,
            errors_grew,
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    commit: String,
    minutes: f64,
    warmup_minutes: f64,
    elapsed_s: f64,
    slots: usize,
    sample_secs: u64,
    load_average_end: String,
    ops: BTreeMap<&'static str, OpCount>,
    ops_total: u64,
    ops_failed: u64,
    failures: Vec<String>,
    operator: ProcessReport,
    webhook: ProcessReport,
    envoys_rss_mib: Vec<Series>,
    verdict: String,
    error_verdict: String,
    samples: Vec<Sample>,
}

impl Report {
    fn new(args: &Args, warmup: f64, elapsed: Duration, churn: Churn, samples: Vec<Sample>) -> Self {
        let warmup_s = warmup * 60.0;
        let operator = ProcessReport::new(&samples, warmup_s, |s| &s.operator);
        let webhook = ProcessReport::new(&samples, warmup_s, |s| &s.webhook);
        let envoys = samples.first().map_or(0, |s| s.envoys_rss_mib.len());
        let envoys_rss_mib = (0..envoys)
            .map(|i| series(&samples, warmup_s, |s| s.envoys_rss_mib.get(i).copied().unwrap_or(f64::NAN)))
            .collect();
        let ops_total = churn.total();
        let ops_failed = churn.ops.values().map(|c| c.failed).sum();
        let verdict = if operator.flat && webhook.flat {
            format!(
                "flat (|RSS slope| < {FLAT_RSS_MIB_PER_HOUR} MiB/h and |fd slope| < {FLAT_FDS_PER_HOUR}/h for both after the warm-up)"
            )
        } else {
            let who: Vec<&str> =
                [("operator", operator.flat), ("webhook", webhook.flat)].iter().filter(|w| !w.1).map(|w| w.0).collect();
            format!(
                "growing: {} (thresholds |RSS slope| < {FLAT_RSS_MIB_PER_HOUR} MiB/h, |fd slope| < {FLAT_FDS_PER_HOUR}/h)",
                who.join(", ")
            )
        };
        let mut grew = Vec::new();
        if operator.errors_grew {
            grew.push("operator error counters or ERROR lines".to_owned());
        }
        if webhook.errors_grew {
            grew.push("webhook error counters or ERROR lines".to_owned());
        }
        if ops_failed > 0 {
            grew.push(format!("{ops_failed} churn operations failed"));
        }
        if !operator.running_at_end || !webhook.running_at_end {
            grew.push("a process was not running at the end".to_owned());
        }
        let error_verdict =
            if grew.is_empty() { "no error growth".to_owned() } else { format!("errors grew: {}", grew.join("; ")) };
        Self {
            commit: args.commit.clone(),
            minutes: args.minutes,
            warmup_minutes: warmup,
            elapsed_s: elapsed.as_secs_f64(),
            slots: args.slots,
            sample_secs: args.sample_secs,
            load_average_end: std::fs::read_to_string("/proc/loadavg")
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            ops: churn.ops,
            ops_total,
            ops_failed,
            failures: churn.failures,
            operator,
            webhook,
            envoys_rss_mib,
            verdict,
            error_verdict,
            samples,
        }
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let mut line = |s: String| {
            md.push_str(&s);
            md.push('\n');
        };
        line(format!(
            "Commit {}; {:.1} minutes of churn ({:.0} s measured), samples every {} s ({}), warm-up left out of the slopes: the first {:.1} minutes; load average at the end {}.",
            self.commit,
            self.minutes,
            self.elapsed_s,
            self.sample_secs,
            self.samples.len(),
            self.warmup_minutes,
            self.load_average_end
        ));
        line(String::new());
        line(format!("**Verdict: {}.** **{}.**", self.verdict, self.error_verdict));
        line(String::new());
        line("| process | RSS start / end / max (MiB) | RSS slope after warm-up | fds start / end / max | fd slope after warm-up |".into());
        line("|---|---:|---:|---:|---:|".into());
        for (name, p) in [("operator", &self.operator), ("webhook", &self.webhook)] {
            line(format!(
                "| {name} | {:.1} / {:.1} / {:.1} | {:+.2} MiB/h | {:.0} / {:.0} / {:.0} | {:+.2} /h |",
                p.rss_mib.start,
                p.rss_mib.end,
                p.rss_mib.max,
                p.rss_mib.slope_per_hour,
                p.fds.start,
                p.fds.end,
                p.fds.max,
                p.fds.slope_per_hour
            ));
        }
        for (i, e) in self.envoys_rss_mib.iter().enumerate() {
            line(format!(
                "| envoy-{} (not judged) | {:.1} / {:.1} / {:.1} | {:+.2} MiB/h | – | – |",
                i + 1,
                e.start,
                e.end,
                e.max,
                e.slope_per_hour
            ));
        }
        line(String::new());
        line(format!("Operations: {} in all, {} failed.", self.ops_total, self.ops_failed));
        line(String::new());
        line("| operation | ok | denied (as intended) | failed |".into());
        line("|---|---:|---:|---:|".into());
        for (op, c) in &self.ops {
            line(format!("| {op} | {} | {} | {} |", c.ok, c.denied, c.failed));
        }
        line(String::new());
        line("Error counters (metrics `*_total` whose name or labels say error, fail, bad_request, reject, restart, timeout or panic) and log lines, at the start / after the warm-up / at the end:".into());
        line(String::new());
        line("| process | series | start | after warm-up | end |".into());
        line("|---|---|---:|---:|---:|".into());
        for (name, p) in [("operator", &self.operator), ("webhook", &self.webhook)] {
            for (series, [s, w, e]) in &p.errors {
                line(format!("| {name} | `{series}` | {s} | {w} | {e} |"));
            }
            line(format!("| {name} | WARN log lines | {} | {} | {} |", p.log_warn[0], p.log_warn[1], p.log_warn[2]));
            line(format!(
                "| {name} | ERROR log lines | {} | {} | {} |",
                p.log_error[0], p.log_error[1], p.log_error[2]
            ));
            line(format!("| {name} | running at the end | | | {} |", p.running_at_end));
        }
        if !self.failures.is_empty() {
            line(String::new());
            line(format!("Failed operations (first {}):", self.failures.len()));
            line(String::new());
            for f in &self.failures {
                line(format!("- {f}"));
            }
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_line_is_its_rise_per_hour() {
        let points: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i) * 360.0, 100.0 + f64::from(i))).collect();
        assert!((slope_per_hour(&points) - 10.0).abs() < 1e-9);
        assert!(slope_per_hour(&points[..1]).is_nan());
    }

    #[test]
    fn error_counters_are_counters_that_say_error() {
        let m = "# HELP x\ncsp_operator_reconciles_total{outcome=\"error\"} 3\ncsp_operator_reconciles_total{outcome=\"ok\"} 9\ncsp_errors_gauge 1\n";
        let e = error_counters(m);
        assert_eq!(e.len(), 1);
        assert_eq!(e["csp_operator_reconciles_total{outcome=\"error\"}"], 3.0);
    }

    #[test]
    fn levels_are_read_among_the_first_words() {
        let log =
            "2026-11-28T22:00:00Z  WARN operator: x\n\u{1b}[2m2026\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m y\nINFO z WARN\n";
        assert_eq!(levels(log), (1, 1));
    }
}
