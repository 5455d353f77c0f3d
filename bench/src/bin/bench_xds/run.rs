//! `bench_xds run`: the xDS benchmark against a real API server.
//!
//! 1. The load (`channel_contracts_bench::load`, as `bench_operator` makes it): Nodes in gz, sz and hz,
//!    the namespaces, three Services and EndpointSlices per contract, the contracts. When a kept control
//!    plane already holds all of them (`CSP_BENCH_KEEP=1` of an earlier run) nothing is created.
//! 2. The release operator, `operator run --publish xds`, with TLS (a CA and a serving certificate made
//!    here) or `--xds-insecure`, as the chart's operator ServiceAccount (its token from the TokenRequest API,
//!    exactly the chart's RBAC, as the e2e tests run it); the time until it reports every contract
//!    Programmed (its `csp_operator_contracts` gauge), then its resident memory with no proxy.
//! 3. 10 real Envoys (bootstraps from `operator bootstrap`, each its own listen address 127.0.0.X, admin
//!    port and region, delta ADS) and 1,000 simulated proxies (delta, regions round robin) connect at
//!    once; the time until each has the whole configuration (the simulated proxies say when; an Envoy when
//!    its admin stats show every cluster active and the listener), and until every contract's
//!    `status.proxies` says all proxies acknowledged its version. Then the operator's memory again.
//! 4. N edits of `spec.sla.maxLatency`, one contract at a time: the time from the PATCH until all 1,000
//!    simulated proxies acknowledged the new version (their own clocks: the last one's ACK), and until the
//!    contract's status says `acked == selected == 1,010` at the new `configVersion`; the operator's CPU
//!    time per edit.
//!
//! Around every phase: CPU seconds of the operator, the API server, etcd, the Envoys, this driver and the
//! machine.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use channel_contracts_bench::fixtures;
use channel_contracts_bench::load::{Load, RUN_LABEL};
use channel_contracts_bench::process::{cpu_ticks, machine_ticks, status_mib};
use channel_contracts_bench::prometheus;
use channel_contracts_bench::simulated_proxy::{self, Expected, Report};
use channel_contracts_bench::stats::stats;
use crds::ChannelContract;
use futures::StreamExt;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use super::log;

/// Arguments of `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The run's name: prefixes namespaces and Nodes, value of the label csp-bench-run. Keep it to reuse the
    /// objects of a kept control plane.
    #[arg(long, default_value = "csp-xds")]
    pub run_id: String,
    /// Contracts.
    #[arg(long, default_value_t = 5000)]
    pub contracts: usize,
    /// The contracts are spread over this many namespaces.
    #[arg(long, default_value_t = 10)]
    pub namespaces: usize,
    /// Nodes per region (gz, sz, hz) that the endpoints sit on.
    #[arg(long, default_value_t = 10)]
    pub nodes_per_region: usize,
    /// Creates in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Real Envoys.
    #[arg(long, default_value_t = 10)]
    pub envoys: usize,
    /// Simulated proxies.
    #[arg(long, default_value_t = 1000)]
    pub simulated: usize,
    /// How many namespaces each real Envoy serves (node metadata `csp.contracts.dev/namespaces`), Envoy j
    /// starting at namespace j; 0: every namespace, the whole configuration.
    #[arg(long, default_value_t = 0)]
    pub envoy_namespaces: usize,
    /// Edits of sla.maxLatency, one contract at a time.
    #[arg(long, default_value_t = 30)]
    pub edits: usize,
    /// Proxies that start connecting per second (0: all at once).
    #[arg(long, default_value_t = 0)]
    pub connect_rate: u32,
    /// Stop the run when the operator's resident memory passes this (MiB), to spare a shared machine.
    #[arg(long, default_value_t = 8192)]
    pub max_operator_rss_mib: u32,
    /// Serve xDS in plaintext (`--xds-insecure`) instead of TLS.
    #[arg(long)]
    pub plaintext: bool,
    /// Run the operator with the admin kubeconfig instead of the chart's ServiceAccount.
    #[arg(long)]
    pub admin_kubeconfig: bool,
    /// Extra flags of `operator run`.
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    pub operator_args: Vec<String>,
    /// The release operator binary.
    #[arg(long)]
    pub operator_bin: PathBuf,
    /// Envoy.
    #[arg(long)]
    pub envoy_bin: PathBuf,
    /// The control plane's state folder (CSP_RUN_DIR of e2e/cluster.sh): pids/<component>.
    #[arg(long)]
    pub control_plane_dir: PathBuf,
    /// Where logs, certificates and bootstraps go.
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Clock ticks per second of /proc/<pid>/stat (getconf CLK_TCK).
    #[arg(long, default_value_t = 100)]
    pub clk_tck: u64,
    /// Give up waiting for all contracts Programmed after this long.
    #[arg(long, default_value_t = 900)]
    pub programmed_timeout_secs: u64,
    /// Give up waiting for every proxy's initial configuration after this long.
    #[arg(long, default_value_t = 900)]
    pub initial_timeout_secs: u64,
    /// Give up an edit after this long.
    #[arg(long, default_value_t = 60)]
    pub edit_timeout_secs: u64,
    /// The commit measured (for the results).
    #[arg(long, default_value = "?")]
    pub commit: String,
    /// Where to write the results (JSON).
    #[arg(long)]
    pub json_out: PathBuf,
    /// Where to write the results (a markdown fragment).
    #[arg(long)]
    pub md_out: PathBuf,
}

/// The machine, for the results.
fn machine(args: &RunArgs) -> Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
    };
    let envoy = std::process::Command::new(&args.envoy_bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({
        "date": k8s_openapi::jiff::Timestamp::now().to_string(),
        "commit": args.commit,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": field(&cpuinfo, "model name"),
        "memory": field(&meminfo, "MemTotal"),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "load_average": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "envoy": envoy.rsplit("version: ").next().unwrap_or_default(),
    })
}

// ---------------------------------------------------------------------------------------------------
// processes

/// The processes whose CPU time is counted.
struct Procs {
    /// (name, pids); the Envoys' are known once they start.
    groups: Vec<(&'static str, Mutex<Vec<u32>>)>,
    clk_tck: f64,
}

#[derive(Debug, Clone)]
struct CpuSnap {
    groups: Vec<u64>,
    busy: u64,
    total: u64,
    at: Instant,
}

impl Procs {
    fn snap(&self) -> CpuSnap {
        let (busy, total) = machine_ticks().unwrap_or((0, 0));
        CpuSnap {
            groups: self
                .groups
                .iter()
                .map(|(_, pids)| {
                    pids.lock().unwrap_or_else(PoisonError::into_inner).iter().filter_map(|p| cpu_ticks(*p)).sum()
                })
                .collect(),
            busy,
            total,
            at: Instant::now(),
        }
    }

    /// CPU seconds per group between two snaps, the machine's busy CPU seconds, and the rest (others).
    fn delta(&self, a: &CpuSnap, b: &CpuSnap) -> Value {
        let mut out = serde_json::Map::new();
        let mut ours = 0.0;
        for (i, (name, _)) in self.groups.iter().enumerate() {
            let s = b.groups[i].saturating_sub(a.groups[i]) as f64 / self.clk_tck;
            ours += s;
            out.insert((*name).to_owned(), json!(s));
        }
        let busy = b.busy.saturating_sub(a.busy) as f64 / self.clk_tck;
        out.insert("machine_busy".into(), json!(busy));
        out.insert("machine_capacity".into(), json!(b.total.saturating_sub(a.total) as f64 / self.clk_tck));
        out.insert("others".into(), json!((busy - ours).max(0.0)));
        out.insert("wall".into(), json!(b.at.duration_since(a.at).as_secs_f64()));
        Value::Object(out)
    }

    fn operator_seconds(&self, a: &CpuSnap, b: &CpuSnap) -> f64 {
        b.groups[0].saturating_sub(a.groups[0]) as f64 / self.clk_tck
    }
}

fn control_plane_pid(dir: &Path, name: &str) -> Result<u32> {
    let path = dir.join("pids").join(name);
    std::fs::read_to_string(&path)
        .with_context(|| format!("read {}", path.display()))?
        .trim()
        .parse()
        .with_context(|| format!("a pid in {}", path.display()))
}

fn free_port() -> u16 {
    e2e::free_port()
}

async fn http_get(url: &str, query: &[(&str, &str)]) -> Option<String> {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "-f", "--max-time", "5", "--get"]);
    for (k, v) in query {
        cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
    }
    let out = cmd.arg(url).output().await.ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------------------
// what the contracts' status says

#[derive(Debug, Default)]
struct StatusBook {
    /// The configVersion of each contract now.
    version: HashMap<String, String>,
    /// When each version of a contract was first seen acknowledged by all `target` proxies.
    all_acked: HashMap<String, HashMap<String, Instant>>,
    /// How many proxies count as all, by namespace (the simulated ones and the Envoys that serve it).
    target: HashMap<String, i32>,
    /// Status events seen.
    events: usize,
}

impl StatusBook {
    /// The contracts whose current version all `target` proxies acknowledged, and when the last did.
    fn complete(&self) -> (usize, Option<Instant>) {
        let mut n = 0;
        let mut last = None;
        for (key, version) in &self.version {
            if let Some(at) = self.all_acked.get(key).and_then(|m| m.get(version)) {
                n += 1;
                last = last.max(Some(*at));
            }
        }
        (n, last)
    }
}

type Shared<T> = Arc<(Mutex<T>, Notify)>;

fn lock<T>(shared: &Shared<T>) -> std::sync::MutexGuard<'_, T> {
    shared.0.lock().unwrap_or_else(PoisonError::into_inner)
}

fn contract_key(c: &ChannelContract) -> String {
    format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any())
}

fn watch_status(client: Client, run_id: &str, book: Shared<StatusBook>, synced: Arc<Notify>) {
    let cfg = watcher::Config::default().labels(&format!("{RUN_LABEL}={run_id}"));
    let stream = watcher(Api::<ChannelContract>::all(client), cfg).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let at = Instant::now();
            match event {
                Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => {
                    let key = contract_key(&c);
                    let namespace = c.namespace().unwrap_or_default();
                    let Some(status) = c.status else { continue };
                    let Some(version) = status.config_version else { continue };
                    let mut b = lock(&book);
                    b.events += 1;
                    let target = b.target.get(&namespace).copied().unwrap_or(0);
                    if let Some(p) = status.proxies
                        && target > 0
                        && p.selected == target
                        && p.acked == p.selected
                    {
                        b.all_acked.entry(key.clone()).or_default().entry(version.clone()).or_insert(at);
                    }
                    b.version.insert(key, version);
                    drop(b);
                    book.1.notify_waiters();
                }
                Ok(watcher::Event::InitDone) => synced.notify_one(),
                Ok(_) => {}
                Err(e) => log(format!("contract watch: {e}")),
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------------
// what the simulated proxies say

#[derive(Debug, Default)]
struct SimBook {
    connected: HashMap<usize, Instant>,
    initial: HashMap<usize, (Instant, usize)>,
    /// (contract base, version) -> proxy -> (received, acked)
    runs: HashMap<(String, String), HashMap<usize, (Instant, Instant)>>,
    ended: Vec<(usize, String)>,
    /// Connection attempts that failed before proxies connected.
    retries: u32,
}

fn collect_reports(mut rx: mpsc::UnboundedReceiver<Report>, book: Shared<SimBook>) {
    tokio::spawn(async move {
        while let Some(report) = rx.recv().await {
            let mut b = lock(&book);
            match report {
                Report::Connected { index, at } => {
                    b.connected.insert(index, at);
                }
                Report::Initial { index, at, bytes } => {
                    b.initial.insert(index, (at, bytes));
                }
                Report::Runs { index, contract, version, received, acked } => {
                    b.runs.entry((contract, version)).or_default().insert(index, (received, acked));
                }
                Report::Retried { retries, .. } => {
                    b.retries += retries;
                }
                Report::Ended { index, reason } => {
                    log(format!("simulated proxy {index}: {reason}"));
                    b.ended.push((index, reason));
                }
            }
            drop(b);
            book.1.notify_waiters();
        }
    });
}

/// Waits until `done` says so (checked on every notification and every 200 ms), or the deadline.
async fn wait_for<T, R>(shared: &Shared<T>, deadline: Instant, mut done: impl FnMut(&T) -> Option<R>) -> Option<R> {
    loop {
        let notified = shared.1.notified();
        if let Some(r) = done(&lock(shared)) {
            return Some(r);
        }
        if Instant::now() >= deadline {
            return None;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200).min(deadline - Instant::now()), notified).await;
    }
}

// ---------------------------------------------------------------------------------------------------
// Envoys

struct Envoy {
    process: e2e::Tied,
    admin: String,
    node_id: String,
    region: &'static str,
    listen: String,
    /// The namespaces it serves; None: all.
    namespaces: Option<Vec<String>>,
}

impl Envoy {
    /// (active clusters, active listeners, connected to the control plane).
    async fn state(&self) -> Option<(u64, u64, u64)> {
        let text = http_get(
            &format!("{}/stats", self.admin),
            &[(
                "filter",
                "^(cluster_manager\\.active_clusters|listener_manager\\.total_listeners_active|control_plane\\.connected_state)$",
            )],
        )
        .await?;
        let get = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok()))
        };
        Some((
            get("cluster_manager.active_clusters")?,
            get("listener_manager.total_listeners_active")?,
            get("control_plane.connected_state").unwrap_or(0),
        ))
    }
}

/// The namespaces Envoy `j` serves; None: all.
fn envoy_namespaces(args: &RunArgs, load: &Load, j: usize) -> Option<Vec<String>> {
    (args.envoy_namespaces > 0)
        .then(|| (0..args.envoy_namespaces.min(args.namespaces)).map(|m| load.namespace(j + m)).collect())
}

fn start_envoy(args: &RunArgs, load: &Load, xds_port: u16, j: usize, tls: Option<&Path>) -> Result<Envoy> {
    let namespaces = envoy_namespaces(args, load, j);
    let region = fixtures::REGIONS[j % fixtures::REGIONS.len()];
    let node_id = format!("envoy-{j:02}");
    let listen = format!("127.0.0.{}", 10 + j);
    let admin_port = free_port();
    let dir = args.work_dir.join(&node_id);
    std::fs::create_dir_all(&dir)?;
    let mut cmd = std::process::Command::new(&args.operator_bin);
    cmd.args(["bootstrap", "--xds-address", &format!("127.0.0.1:{xds_port}"), "--node-id", &node_id]).args([
        "--region",
        region,
        "--listen-address",
        &listen,
        "--admin",
        &format!("127.0.0.1:{admin_port}"),
    ]);
    if let Some(namespaces) = &namespaces {
        cmd.args(["--namespaces", &namespaces.join(",")]);
    }
    match tls {
        Some(ca) => cmd.arg("--ca").arg(ca).args(["--server-name", "localhost"]),
        None => cmd.arg("--insecure"),
    };
    let out = cmd.output().context("run operator bootstrap")?;
    if !out.status.success() {
        bail!("operator bootstrap failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let bootstrap = dir.join("envoy.yaml");
    std::fs::write(&bootstrap, &out.stdout)?;
    let envoy_args: Vec<String> = vec![
        "-c".into(),
        bootstrap.to_string_lossy().into_owned(),
        "--concurrency".into(),
        "1".into(),
        "--disable-hot-restart".into(),
        "-l".into(),
        "warning".into(),
    ];
    let process = e2e::Tied::spawn(&args.envoy_bin, &envoy_args, &[], &dir.join("envoy.log"));
    Ok(Envoy { process, admin: format!("http://127.0.0.1:{admin_port}"), node_id, region, listen, namespaces })
}

// ---------------------------------------------------------------------------------------------------
// the operator

async fn operator_metrics(admin: &str) -> String {
    http_get(&format!("{admin}/metrics"), &[]).await.unwrap_or_default()
}

/// The figures of the operator's /metrics the report uses.
fn operator_figures(text: &str) -> Value {
    let s = |name: &str, labels: &[(&str, &str)]| prometheus::sum(text, name, labels);
    json!({
        "programmed": s("csp_operator_contracts", &[("condition", "Programmed"), ("status", "True")]),
        "reconciles_ok": s("csp_operator_reconciles_total", &[("result", "ok")]),
        "reconciles_error": s("csp_operator_reconciles_total", &[("result", "error")]),
        "reconcile_seconds_sum": s("csp_operator_reconcile_duration_seconds_sum", &[]),
        "reconcile_count": s("csp_operator_reconcile_duration_seconds_count", &[]),
        "connected": s("csp_xds_connected_proxies", &[]),
        "push_seconds_sum": s("csp_xds_push_duration_seconds_sum", &[]),
        "push_count": s("csp_xds_push_duration_seconds_count", &[]),
        "nacks": s("csp_xds_nacks_total", &[]),
    })
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn diff(a: &Value, b: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in b.as_object().into_iter().flatten() {
        out.insert(k.clone(), json!(f(v) - f(&a[k])));
    }
    Value::Object(out)
}

/// The API server's requests by "VERB resource[/subresource]".
async fn apiserver_requests(client: &Client) -> HashMap<String, f64> {
    let Ok(req) = kube::core::Request::new("").get("metrics", &Default::default()) else { return HashMap::new() };
    let text = client.request_text(req).await.unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((_, labels, v)) = prometheus::parse_sample(line) else { continue };
        let resource = match labels.get("subresource").filter(|s| !s.is_empty()) {
            Some(sub) => format!("{}/{sub}", labels.get("resource").unwrap_or(&"")),
            None => labels.get("resource").unwrap_or(&"").to_string(),
        };
        *out.entry(format!("{} {resource}", labels.get("verb").unwrap_or(&""))).or_insert(0.0) += v;
    }
    out
}

fn request_delta(a: &HashMap<String, f64>, b: &HashMap<String, f64>) -> Value {
    let mut v: Vec<(String, f64)> =
        b.iter().map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0))).filter(|(_, v)| *v > 0.0).collect();
    v.sort_by(|x, y| y.1.total_cmp(&x.1));
    Value::Object(v.into_iter().take(8).map(|(k, v)| (k, json!(v))).collect())
}

/// A phase's sample: CPU per process, the operator's metrics, the API server's requests.
struct Phase<'a> {
    procs: &'a Procs,
    client: &'a Client,
    admin: &'a str,
    cpu: CpuSnap,
    metrics: Value,
    requests: HashMap<String, f64>,
}

impl<'a> Phase<'a> {
    async fn start(procs: &'a Procs, client: &'a Client, admin: &'a str) -> Phase<'a> {
        let metrics = operator_figures(&operator_metrics(admin).await);
        let requests = apiserver_requests(client).await;
        Phase { procs, client, admin, cpu: procs.snap(), metrics, requests }
    }

    async fn finish(self) -> Value {
        let cpu = self.procs.snap();
        let metrics = operator_figures(&operator_metrics(self.admin).await);
        let requests = apiserver_requests(self.client).await;
        json!({
            "cpu_s": self.procs.delta(&self.cpu, &cpu),
            "operator": diff(&self.metrics, &metrics),
            "apiserver_requests": request_delta(&self.requests, &requests),
        })
    }
}

// ---------------------------------------------------------------------------------------------------
// the run

/// The resources of one contract (those of `operator::translate::xds`), to know the whole configuration's size.
fn expected(contracts: usize) -> Result<Expected> {
    use channel_contracts_bench::load::typed;
    let contract: ChannelContract = typed(fixtures::contract_object(0, "bench"))?;
    let endpoints: operator::ChannelEndpoints = typed(fixtures::channel_endpoints(0))?;
    let valid = operator::translate::ValidContract::new(&contract).context("a valid fixture")?;
    let x = operator::translate::xds(&valid, &endpoints, Some("gz"), None).context("translate a fixture")?;
    Ok(Expected {
        clusters: x.clusters.len() * contracts,
        listeners: 1,
        scopes: x.scopes.len() * contracts,
        routes: contracts,
    })
}

/// The clusters of the contracts an Envoy serves.
fn clusters_of(expected: &Expected, envoy: &Envoy, load: &Load, contracts: usize) -> usize {
    match &envoy.namespaces {
        None => expected.clusters,
        Some(list) => {
            let served = (0..contracts).filter(|i| list.contains(&load.namespace(*i))).count();
            expected.clusters / contracts.max(1) * served
        }
    }
}

fn sa_kubeconfig() -> Result<PathBuf> {
    let path = std::panic::catch_unwind(|| e2e::rbac::operator_kubeconfig().to_path_buf())
        .map_err(|_| anyhow::anyhow!("the chart's RBAC or the ServiceAccount token could not be set up (see above)"))?;
    Ok(path)
}

pub async fn run(args: RunArgs) -> Result<()> {
    std::fs::create_dir_all(&args.work_dir)?;
    let client = Client::try_default().await.context("a Kubernetes client (KUBECONFIG)")?;
    let total_proxies = args.envoys + args.simulated;
    let expected = expected(args.contracts)?;
    log(format!("the whole configuration: {expected:?}"));
    let load = Load {
        client: client.clone(),
        run_id: args.run_id.clone(),
        namespaces: args.namespaces,
        nodes_per_region: args.nodes_per_region,
        concurrency: args.concurrency,
        tolerate_existing: true,
        who: "bench_xds",
    };

    // --- 1. the load
    let contracts_api: Api<ChannelContract> = Api::all(client.clone());
    let existing = contracts_api
        .list_metadata(&ListParams::default().labels(&format!("{RUN_LABEL}={}", args.run_id)))
        .await
        .context("list the contracts")?
        .items
        .len();
    let setup = if existing >= args.contracts {
        log(format!("{existing} contracts of run {} already exist: reusing the load", args.run_id));
        json!({"reused": true})
    } else {
        log(format!(
            "setup: {} Nodes, {} namespaces, {} Services and EndpointSlices, {} contracts",
            3 * args.nodes_per_region,
            args.namespaces,
            3 * args.contracts,
            args.contracts
        ));
        let mut setup = load.setup(args.contracts).await?;
        let contracts: Vec<(Api<ChannelContract>, ChannelContract)> = (0..args.contracts)
            .map(|i| Ok((Api::namespaced(client.clone(), &load.namespace(i)), load.contract(i)?)))
            .collect::<Result<_>>()?;
        setup["contracts_s"] = json!(load.create_all("ChannelContracts", contracts).await?.as_secs_f64());
        setup
    };

    // --- 2. the operator
    let kubeconfig = if args.admin_kubeconfig {
        None
    } else {
        let path = tokio::task::spawn_blocking(sa_kubeconfig).await??;
        log(format!("the operator runs as the chart's ServiceAccount (kubeconfig {})", path.display()));
        Some(path)
    };
    let xds_port = free_port();
    let admin_port = free_port();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let ca = if args.plaintext {
        None
    } else {
        let dir = args.work_dir.join("certs");
        std::fs::create_dir_all(&dir)?;
        let (ca, serving) = webhook::certs::ca_and_serving(
            "csp-bench-xds",
            &["localhost".into(), "127.0.0.1".into()],
            Duration::from_secs(2 * 86_400),
            Duration::from_secs(2 * 86_400),
        )?;
        std::fs::write(dir.join("ca.crt"), &ca.cert)?;
        std::fs::write(dir.join("tls.crt"), &serving.cert)?;
        std::fs::write(dir.join("tls.key"), &serving.key)?;
        Some((dir, ca.cert))
    };
    let mut operator_args: Vec<String> = vec![
        "run".into(),
        "--publish".into(),
        "xds".into(),
        "--xds-listen".into(),
        format!("127.0.0.1:{xds_port}"),
        "--admin-listen".into(),
        format!("127.0.0.1:{admin_port}"),
        "--log-format".into(),
        "json".into(),
    ];
    match &ca {
        Some((dir, _)) => operator_args.extend([
            "--xds-tls-cert".into(),
            dir.join("tls.crt").to_string_lossy().into_owned(),
            "--xds-tls-key".into(),
            dir.join("tls.key").to_string_lossy().into_owned(),
        ]),
        None => operator_args.push("--xds-insecure".into()),
    }
    operator_args.extend(args.operator_args.iter().filter(|a| !a.is_empty()).cloned());
    let mut env = vec![("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info,kube=warn".into()))];
    if let Some(path) = &kubeconfig {
        env.push(("KUBECONFIG", path.to_string_lossy().into_owned()));
    }
    log(format!("starting {} {}", args.operator_bin.display(), operator_args.join(" ")));
    let t_start = Instant::now();
    let mut operator = e2e::Tied::spawn(&args.operator_bin, &operator_args, &env, &args.work_dir.join("operator.log"));
    let operator_pid = operator.pid.context("the operator's pid")?;
    let procs = Procs {
        groups: vec![
            ("operator", Mutex::new(vec![operator_pid])),
            ("kube-apiserver", Mutex::new(vec![control_plane_pid(&args.control_plane_dir, "kube-apiserver")?])),
            ("etcd", Mutex::new(vec![control_plane_pid(&args.control_plane_dir, "etcd")?])),
            (
                "kube-controller-manager",
                Mutex::new(vec![control_plane_pid(&args.control_plane_dir, "kube-controller-manager")?]),
            ),
            ("envoys", Mutex::new(Vec::new())),
            ("driver", Mutex::new(vec![std::process::id()])),
        ],
        clk_tck: args.clk_tck as f64,
    };
    let phase = Phase::start(&procs, &client, &admin).await;
    let deadline = Instant::now() + Duration::from_secs(args.programmed_timeout_secs);
    let mut next_log = Instant::now() + Duration::from_secs(10);
    let programmed_after = loop {
        if !operator.running() {
            bail!("the operator exited:\n{}", operator.log_tail());
        }
        let m = operator_figures(&operator_metrics(&admin).await);
        if f(&m["programmed"]) >= args.contracts as f64 {
            break t_start.elapsed();
        }
        if Instant::now() > deadline {
            bail!("not every contract Programmed within {} s: {m}", args.programmed_timeout_secs);
        }
        if Instant::now() > next_log {
            log(format!("{} of {} contracts Programmed", m["programmed"], args.contracts));
            next_log += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    log(format!(
        "all {} contracts Programmed {:.1} s after the operator started",
        args.contracts,
        programmed_after.as_secs_f64()
    ));
    // Until its reconciles settle (the Events, the second reconciles).
    let mut last = f(&operator_figures(&operator_metrics(&admin).await)["reconcile_count"]);
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = f(&operator_figures(&operator_metrics(&admin).await)["reconcile_count"]);
        if now == last {
            break;
        }
        last = now;
    }
    let start_phase = phase.finish().await;
    let rss_idle = status_mib(operator_pid, "VmRSS:").unwrap_or(f64::NAN);
    let hwm_idle = status_mib(operator_pid, "VmHWM:").unwrap_or(f64::NAN);
    log(format!("operator with no proxy: VmRSS {rss_idle:.1} MiB (VmHWM {hwm_idle:.1} MiB)"));

    // --- 3. the proxies
    let status: Shared<StatusBook> = Arc::default();
    {
        let mut book = lock(&status);
        for n in 0..args.namespaces {
            let ns = load.namespace(n);
            let envoys = (0..args.envoys)
                .filter(|j| envoy_namespaces(&args, &load, *j).is_none_or(|list| list.contains(&ns)))
                .count();
            book.target.insert(ns, i32::try_from(args.simulated + envoys)?);
        }
    }
    let synced = Arc::new(Notify::new());
    let synced_wait = synced.notified();
    watch_status(client.clone(), &args.run_id, status.clone(), synced.clone());
    tokio::time::timeout(Duration::from_secs(120), synced_wait).await.context("the contract watch did not list")?;

    let edited: Vec<usize> = (0..args.edits).map(|k| (k * 7_919 + 17) % args.contracts).collect();
    let watched: Arc<HashSet<String>> = Arc::new(
        edited.iter().map(|i| format!("csp~{}~{}", load.namespace(*i), fixtures::contract_name(*i))).collect(),
    );
    let sims: Shared<SimBook> = Arc::default();
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    collect_reports(reports_rx, sims.clone());
    let tls = ca.as_ref().map(|(_, pem)| {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem))
            .domain_name("localhost")
    });
    let server = format!("{}://127.0.0.1:{xds_port}", if tls.is_some() { "https" } else { "http" });

    let phase = Phase::start(&procs, &client, &admin).await;
    let t0 = Instant::now();
    let pace = (args.connect_rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(args.connect_rate)));
    log(format!(
        "connecting {} Envoys and {} simulated proxies {}",
        args.envoys,
        args.simulated,
        if args.connect_rate > 0 { format!("at {} per second", args.connect_rate) } else { "at once".to_owned() }
    ));
    let mut envoys = Vec::new();
    for j in 0..args.envoys {
        if let Some(pace) = pace {
            tokio::time::sleep_until((t0 + pace * u32::try_from(j)?).into()).await;
        }
        envoys.push(start_envoy(&args, &load, xds_port, j, ca.as_ref().map(|(dir, _)| dir.join("ca.crt")).as_deref())?);
    }
    *procs.groups[4].1.lock().unwrap_or_else(PoisonError::into_inner) =
        envoys.iter().filter_map(|e| e.process.pid).collect();
    for index in 0..args.simulated {
        if let Some(pace) = pace {
            tokio::time::sleep_until((t0 + pace * u32::try_from(index + args.envoys)?).into()).await;
        }
        let config = simulated_proxy::Config {
            index,
            node_id: format!("sim-{index:04}"),
            region: fixtures::REGIONS[index % fixtures::REGIONS.len()].to_owned(),
            server: server.clone(),
            tls: tls.clone(),
            watched: watched.clone(),
            expected,
        };
        let reports = reports_tx.clone();
        tokio::spawn(async move {
            match simulated_proxy::connect(&config).await {
                Ok((channel, retries)) => {
                    if retries > 0 {
                        let _ = reports.send(Report::Retried { index: config.index, retries });
                    }
                    simulated_proxy::run(config, channel, reports).await
                }
                Err(e) => {
                    let _ = reports.send(Report::Ended { index: config.index, reason: format!("connect: {e}") });
                }
            }
        });
    }
    let deadline = t0 + Duration::from_secs(args.initial_timeout_secs);
    let mut envoy_done: Vec<Option<Instant>> = vec![None; envoys.len()];
    let mut sims_done = None;
    let mut status_done = None;
    let mut next_log = Instant::now() + Duration::from_secs(10);
    let mut peak_rss_connecting: f64 = 0.0;
    loop {
        for (j, envoy) in envoys.iter_mut().enumerate() {
            if !envoy.process.running() {
                bail!("Envoy {} exited:\n{}", envoy.node_id, envoy.process.log_tail());
            }
            if envoy_done[j].is_none()
                && let Some((clusters, listeners, _)) = envoy.state().await
                && clusters as usize > clusters_of(&expected, envoy, &load, args.contracts)
                && listeners as usize >= expected.listeners
            {
                envoy_done[j] = Some(Instant::now());
            }
        }
        if !operator.running() {
            bail!("the operator exited:\n{}", operator.log_tail());
        }
        peak_rss_connecting = peak_rss_connecting.max(status_mib(operator_pid, "VmRSS:").unwrap_or(0.0));
        if peak_rss_connecting > f64::from(args.max_operator_rss_mib) {
            bail!(
                "the operator's resident memory passed {} MiB while the proxies connected ({:.0} s after the first): stopped",
                args.max_operator_rss_mib,
                t0.elapsed().as_secs_f64()
            );
        }
        {
            let s = lock(&sims);
            if !s.ended.is_empty() {
                bail!("{} simulated proxies ended, e.g. {:?}", s.ended.len(), s.ended.first());
            }
            if sims_done.is_none() && s.initial.len() == args.simulated {
                sims_done = s.initial.values().map(|(at, _)| *at).max().or(Some(t0));
            }
        }
        if status_done.is_none() {
            let (n, last) = lock(&status).complete();
            if n == args.contracts {
                status_done = last;
            }
        }
        let envoys_done = envoy_done.iter().all(Option::is_some);
        if envoys_done && sims_done.is_some() && status_done.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let (n, _) = lock(&status).complete();
            bail!(
                "after {} s: {} of {} Envoys, {} of {} simulated proxies have the whole configuration; {} of {} contracts acknowledged by all",
                args.initial_timeout_secs,
                envoy_done.iter().filter(|d| d.is_some()).count(),
                envoys.len(),
                lock(&sims).initial.len(),
                args.simulated,
                n,
                args.contracts
            );
        }
        if Instant::now() > next_log {
            let (n, _) = lock(&status).complete();
            let m = operator_figures(&operator_metrics(&admin).await);
            log(format!(
                "after {:.0} s: {} connected; Envoys {}/{}, simulated {}/{} complete; {} of {} contracts acked by all; operator VmRSS {:.0} MiB",
                t0.elapsed().as_secs_f64(),
                m["connected"],
                envoy_done.iter().filter(|d| d.is_some()).count(),
                envoys.len(),
                lock(&sims).initial.len(),
                args.simulated,
                n,
                args.contracts,
                status_mib(operator_pid, "VmRSS:").unwrap_or(f64::NAN)
            ));
            next_log += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let initial = {
        let s = lock(&sims);
        let secs = |at: &Instant| at.duration_since(t0).as_secs_f64();
        let sim_times: Vec<f64> = s.initial.values().map(|(at, _)| secs(at)).collect();
        let sim_connect: Vec<f64> = s.connected.values().map(secs).collect();
        let bytes: Vec<f64> = s.initial.values().map(|(_, b)| *b as f64).collect();
        let envoy_times: Vec<f64> = envoy_done.iter().flatten().map(secs).collect();
        let all = [sims_done, status_done].into_iter().flatten().chain(envoy_done.iter().flatten().copied()).max();
        json!({
            "simulated_s": stats(&sim_times),
            "simulated_connected_s": stats(&sim_connect),
            "simulated_bytes": stats(&bytes),
            "simulated_connect_retries": s.retries,
            "envoys_s": stats(&envoy_times),
            "status_all_acked_s": status_done.map(|t| secs(&t)),
            "all_s": all.map(|t| secs(&t)),
        })
    };
    log(format!("initial configuration: {initial}"));
    // Until the status writes of the initial round settle.
    let mut last = lock(&status).events;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = lock(&status).events;
        if now == last {
            break;
        }
        last = now;
    }
    let connect_phase = phase.finish().await;
    let rss_connected = status_mib(operator_pid, "VmRSS:").unwrap_or(f64::NAN);
    let hwm_connected = status_mib(operator_pid, "VmHWM:").unwrap_or(f64::NAN);
    let connected_metric = f(&operator_figures(&operator_metrics(&admin).await)["connected"]);
    log(format!(
        "operator with {connected_metric} proxies: VmRSS {rss_connected:.1} MiB (VmHWM {hwm_connected:.1} MiB): {:.3} MiB per proxy",
        (rss_connected - rss_idle) / total_proxies as f64
    ));

    // --- 4. edits
    let phase = Phase::start(&procs, &client, &admin).await;
    let metrics_before = operator_figures(&operator_metrics(&admin).await);
    let mut sim_ack_ms = Vec::new();
    let mut sim_received_ms = Vec::new();
    let mut status_ms = Vec::new();
    let mut patch_ms = Vec::new();
    let mut cpu_per_edit = Vec::new();
    let mut failures = Vec::new();
    // A latency no earlier run set (a kept control plane keeps the contracts of earlier runs).
    let salt = 1000
        + 1000
            * (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
                % 100_000);
    for (k, &i) in edited.iter().enumerate() {
        let (ns, name) = (load.namespace(i), fixtures::contract_name(i));
        let key = format!("{ns}/{name}");
        let base = format!("csp~{ns}~{name}");
        let Some(old) = lock(&status).version.get(&key).cloned() else {
            failures.push(format!("{key}: no configVersion before the edit"));
            continue;
        };
        let cpu0 = procs.snap();
        let api: Api<ChannelContract> = Api::namespaced(client.clone(), &ns);
        let t = Instant::now();
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sla": {"maxLatency": format!("{}ms", salt + k as u64)}}})),
        )
        .await
        .with_context(|| format!("patch {key}"))?;
        patch_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let deadline = t + Duration::from_secs(args.edit_timeout_secs);
        let sim_done = if args.simulated == 0 {
            Some((None, None))
        } else {
            wait_for(&sims, deadline, |s| {
                s.runs.iter().find_map(|((c, v), by)| {
                    (*c == base && *v != old && by.len() == args.simulated).then(|| {
                        let acked = by.values().map(|(_, a)| *a).max();
                        let received = by.values().map(|(r, _)| *r).max();
                        (acked, received)
                    })
                })
            })
            .await
        };
        let status_done = wait_for(&status, deadline, |s| {
            s.all_acked.get(&key)?.iter().find(|(v, at)| **v != old && **at >= t).map(|(_, at)| *at)
        })
        .await;
        // The operator's work for this edit: until its status writes are done.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let cpu1 = procs.snap();
        cpu_per_edit.push(procs.operator_seconds(&cpu0, &cpu1) * 1e3);
        match (sim_done, status_done) {
            (Some((acked, received)), Some(status_at))
                if args.simulated == 0 || (acked.is_some() && received.is_some()) =>
            {
                let acked_ms = acked.map(|a| a.duration_since(t).as_secs_f64() * 1e3);
                sim_ack_ms.extend(acked_ms);
                sim_received_ms.extend(received.map(|r| r.duration_since(t).as_secs_f64() * 1e3));
                status_ms.push(status_at.duration_since(t).as_secs_f64() * 1e3);
                let selected = lock(&status).target.get(&ns).copied().unwrap_or(0);
                log(format!(
                    "edit {k} {key}: all {} simulated proxies acked after {:.0} ms; status acked == selected == {selected} after {:.0} ms",
                    args.simulated,
                    acked_ms.unwrap_or(f64::NAN),
                    status_at.duration_since(t).as_secs_f64() * 1e3
                ));
            }
            (sim, st) => {
                let n =
                    lock(&sims).runs.iter().filter(|((c, v), _)| *c == base && *v != old).map(|(_, by)| by.len()).max();
                failures.push(format!(
                    "{key}: after {} s the simulated proxies {}, the status {}",
                    args.edit_timeout_secs,
                    if sim.is_some() { "all acked".to_owned() } else { format!("NOT all acked ({n:?} of them)") },
                    if st.is_some() { "said all acked" } else { "did NOT say all acked" }
                ));
                log(format!("edit {k}: {}", failures.last().map(String::as_str).unwrap_or_default()));
            }
        }
    }
    let metrics_after = operator_figures(&operator_metrics(&admin).await);
    let edit_phase = phase.finish().await;
    let pushes = diff(&metrics_before, &metrics_after);

    // --- the end: everyone still there, and what the Envoys hold
    let mut envoy_final = Vec::new();
    for envoy in &mut envoys {
        let state = envoy.state().await;
        envoy_final.push(json!({
            "node": envoy.node_id, "region": envoy.region, "listen": envoy.listen,
            "running": envoy.process.running(),
            "active_clusters": state.map(|s| s.0), "listeners": state.map(|s| s.1), "connected": state.map(|s| s.2),
            "vmrss_mib": envoy.process.pid.and_then(|p| status_mib(p, "VmRSS:")),
        }));
    }
    let final_metrics = operator_figures(&operator_metrics(&admin).await);
    let ended = lock(&sims).ended.clone();
    let json = json!({
        "machine": machine(&args),
        "args": {
            "contracts": args.contracts, "namespaces": args.namespaces, "envoys": args.envoys,
            "simulated": args.simulated, "envoy_namespaces": args.envoy_namespaces, "edits": args.edits, "tls": !args.plaintext,
            "connect_rate_per_s": args.connect_rate,
            "operator_identity": if kubeconfig.is_some() { "the chart's operator ServiceAccount (token)" } else { "admin kubeconfig" },
            "operator_args": operator_args,
        },
        "expected": expected,
        "setup": setup,
        "operator_start": {
            "all_programmed_s": programmed_after.as_secs_f64(),
            "phase": start_phase,
        },
        "memory_mib": {
            "idle_vmrss": rss_idle, "idle_vmhwm": hwm_idle,
            "connected_vmrss": rss_connected, "connected_vmhwm": hwm_connected,
            "peak_vmrss_while_connecting": peak_rss_connecting,
            "per_proxy": (rss_connected - rss_idle) / total_proxies as f64,
            "final_vmrss": status_mib(operator_pid, "VmRSS:"), "final_vmhwm": status_mib(operator_pid, "VmHWM:"),
        },
        "initial": initial,
        "connect_phase": connect_phase,
        "edits": {
            "n": args.edits,
            "patch_ms": stats(&patch_ms),
            "simulated_all_acked_ms": stats(&sim_ack_ms),
            "simulated_all_received_ms": stats(&sim_received_ms),
            "status_all_acked_ms": stats(&status_ms),
            "operator_cpu_ms_per_edit": stats(&cpu_per_edit),
            "push_duration_metric": {
                "count": pushes["push_count"],
                "mean_ms": f(&pushes["push_seconds_sum"]) / f(&pushes["push_count"]) * 1e3,
            },
            "failures": failures,
            "phase": edit_phase,
        },
        "final": {
            "operator_metrics": final_metrics,
            "envoys": envoy_final,
            "simulated_ended": ended.len(),
            "operator_running": operator.running(),
        },
    });
    let md = super::report::markdown(&json);
    std::fs::write(&args.json_out, serde_json::to_string_pretty(&json)?)?;
    std::fs::write(&args.md_out, &md)?;
    println!("{md}");
    drop(envoys);
    operator.stop();
    Ok(())
}
