//! The driver of `make bench-operator` (bench/operator.sh); not part of CI.
//!
//! - `render`: the time of `operator::desired()` for N distinct realistic contracts (those of
//!   `operator/benches/fixtures`, which `operator/benches/render.rs` measures with criterion too), each
//!   call timed alone: total, median, p99.
//! - `api`: against a real API server with the release operator running (started by the script): creates
//!   the Nodes, namespaces, Services and EndpointSlices the contracts need, then the contracts in steps
//!   (e.g. 1,000 and then up to 5,000), and measures the time until every contract is Programmed (from a
//!   watch); then, with all of them present, edits `spec.sla.maxLatency` of one contract at a time and
//!   measures the time until the ConfigMap carries the new configuration (from a metadata watch on the
//!   ConfigMaps) and until the status says Programmed for the new generation. Around every phase it
//!   samples the operator's peak RSS (`VmHWM`), the CPU time of the operator, the API server, etcd, the
//!   controller manager, itself and the whole machine, the API server's requests by verb and resource,
//!   and the operator's reconciles. Everything it creates carries the label `csp-bench-run=<run id>`; it
//!   deletes nothing: it runs against a control plane of its own, which the script throws away.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use channel_contracts_bench::fixtures;
use channel_contracts_bench::load::{Load, RUN_LABEL, typed};
use channel_contracts_bench::process::{cpu_ticks, machine_ticks, status_mib};
use channel_contracts_bench::prometheus::parse_sample;
use channel_contracts_bench::stats::stats;
use clap::{Parser, Subcommand};
use crds::ChannelContract;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
/// The operator's ConfigMaps.
const MANAGED_CONFIG_MAPS: &str = "app.kubernetes.io/managed-by=channel-contracts-operator";
/// The ConfigMap annotation with the configuration's version.
const CONFIG_VERSION_ANNOTATION: &str = "csp.contracts.dev/config-version";

#[derive(Debug, Parser)]
#[command(name = "bench_operator", about = "The driver of make bench-operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Times operator::desired() for N distinct contracts, one call at a time.
    Render {
        /// How many contracts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        counts: Vec<usize>,
        /// Where to write the results (JSON).
        #[arg(long)]
        json_out: PathBuf,
        /// Where to write the results (a markdown fragment).
        #[arg(long)]
        md_out: PathBuf,
    },
    /// Time to Programmed, peak RSS and edit-to-ConfigMap latency against the running operator.
    Api(ApiArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct ApiArgs {
    /// A name unique to this run: prefixes namespaces and Nodes, value of the label csp-bench-run.
    #[arg(long)]
    run_id: String,
    /// The contracts are spread over this many namespaces.
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
    /// Contracts present after each step (cumulative, comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    steps: Vec<usize>,
    /// Edits of sla.maxLatency, one at a time, with every contract present.
    #[arg(long, default_value_t = 200)]
    edits: usize,
    /// Nodes per region (gz, sz, hz) that the endpoints sit on.
    #[arg(long, default_value_t = 10)]
    nodes_per_region: usize,
    /// Concurrent creates.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The operator's pid (for VmHWM and CPU time).
    #[arg(long)]
    operator_pid: u32,
    /// The operator's admin server (http://127.0.0.1:PORT), for /metrics.
    #[arg(long)]
    operator_admin: String,
    /// The control plane's state folder (CSP_RUN_DIR of e2e/cluster.sh): pids/<component>.
    #[arg(long)]
    control_plane_dir: PathBuf,
    /// Clock ticks per second of /proc/<pid>/stat (getconf CLK_TCK).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// Give up a step after this long.
    #[arg(long, default_value_t = 600)]
    step_timeout_secs: u64,
    /// Give up an edit after this long.
    #[arg(long, default_value_t = 30)]
    edit_timeout_secs: u64,
    /// Where to write the results (JSON).
    #[arg(long)]
    json_out: PathBuf,
    /// Where to write the results (a markdown fragment).
    #[arg(long)]
    md_out: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Render { counts, json_out, md_out } => {
            let (json, markdown) = render(&counts)?;
            std::fs::write(&json_out, serde_json::to_string_pretty(&json)?)?;
            std::fs::write(&md_out, &markdown)?;
            println!("{markdown}");
            Ok(())
        }
        Command::Api(args) => {
            let client = Client::try_default().await.context("a Kubernetes client (KUBECONFIG)")?;
            let (json, markdown) = api(client, &args).await?;
            std::fs::write(&args.json_out, serde_json::to_string_pretty(&json)?)?;
            std::fs::write(&args.md_out, &markdown)?;
            println!("{markdown}");
            Ok(())
        }
    }
}

fn log(msg: impl AsRef<str>) {
    channel_contracts_bench::log("bench_operator", msg);
}

// ---------------------------------------------------------------------------------------------------
// render

fn render(counts: &[usize]) -> Result<(Value, String)> {
    let options = operator::ProxyOptions::default();
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for &n in counts {
        let inputs: Vec<(ChannelContract, operator::ChannelEndpoints)> = (0..n)
            .map(|i| {
                let ns = format!("bench-{:02}", i % 50);
                Ok((typed(fixtures::contract_object(i, &ns))?, typed(fixtures::channel_endpoints(i))?))
            })
            .collect::<Result<_>>()?;
        // One untimed pass: allocator and caches warm, as in a running operator.
        let mut bytes = Vec::with_capacity(n);
        for (c, e) in &inputs {
            let r = operator::desired(c, e, &options).context("translate")?;
            bytes.push(r.files.values().map(String::len).sum::<usize>() as f64);
        }
        let mut times = Vec::with_capacity(n);
        let start = Instant::now();
        for (c, e) in &inputs {
            let t = Instant::now();
            let r = operator::desired(c, e, &options);
            times.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(r.context("translate")?);
        }
        let total = start.elapsed();
        let s = stats(&times);
        let b = stats(&bytes);
        log(format!(
            "render {n}: total {:.1} ms, median {:.1} µs, p99 {:.1} µs",
            total.as_secs_f64() * 1e3,
            s.p50,
            s.p99
        ));
        rows.push(format!(
            "| {n} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} |",
            total.as_secs_f64() * 1e3,
            s.p50,
            s.p99,
            s.mean,
            n as f64 / total.as_secs_f64(),
            b.p50 / 1024.0
        ));
        json_rows.push(
            json!({"contracts": n, "total_ms": total.as_secs_f64() * 1e3, "per_contract_us": s, "files_bytes": b}),
        );
    }
    let md = format!(
        "| contracts | total (ms) | per contract median (µs) | p99 (µs) | mean (µs) | contracts/s (1 core) | ConfigMap data per contract (KiB) |\n|---:|---:|---:|---:|---:|---:|---:|\n{}\n",
        rows.join("\n")
    );
    Ok((json!({"render": json_rows}), md))
}

// ---------------------------------------------------------------------------------------------------
// process and machine sampling

#[derive(Debug, Clone)]
struct Procs {
    /// (name, pid)
    all: Vec<(&'static str, u32)>,
    clk_tck: u64,
    cpus: f64,
}

#[derive(Debug, Clone)]
struct CpuSnap {
    procs: Vec<u64>,
    busy: u64,
    total: u64,
}

impl Procs {
    fn new(args: &ApiArgs) -> Result<Self> {
        let mut all = vec![("operator", args.operator_pid)];
        for name in ["kube-apiserver", "etcd", "kube-controller-manager"] {
            let path = args.control_plane_dir.join("pids").join(name);
            let pid = std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?
                .trim()
                .parse()
                .with_context(|| format!("a pid in {}", path.display()))?;
            all.push((name, pid));
        }
        all.push(("driver", std::process::id()));
        let cpus = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
        Ok(Self { all, clk_tck: args.clk_tck, cpus })
    }

    fn snap(&self) -> CpuSnap {
        let (busy, total) = machine_ticks().unwrap_or((0, 0));
        CpuSnap { procs: self.all.iter().map(|(_, pid)| cpu_ticks(*pid).unwrap_or(0)).collect(), busy, total }
    }

    /// CPU seconds per process between two snaps, the machine's busy CPU seconds, and the rest (others).
    fn delta(&self, a: &CpuSnap, b: &CpuSnap) -> Value {
        let tck = self.clk_tck as f64;
        let mut out = serde_json::Map::new();
        let mut ours = 0.0;
        for (i, (name, _)) in self.all.iter().enumerate() {
            let s = b.procs[i].saturating_sub(a.procs[i]) as f64 / tck;
            ours += s;
            out.insert((*name).to_owned(), json!(s));
        }
        // /proc/stat counts USER_HZ ticks summed over every CPU.
        let total = b.total.saturating_sub(a.total) as f64;
        let busy = b.busy.saturating_sub(a.busy) as f64 / tck;
        let wall_cpu = total / tck;
        out.insert("machine_busy".into(), json!(busy));
        out.insert("machine_capacity".into(), json!(wall_cpu));
        out.insert("others".into(), json!((busy - ours).max(0.0)));
        out.insert("cpus".into(), json!(self.cpus));
        Value::Object(out)
    }

    fn memory(&self) -> Value {
        let pid = self.all[0].1;
        json!({
            "operator_vmhwm_mib": status_mib(pid, "VmHWM:"),
            "operator_vmrss_mib": status_mib(pid, "VmRSS:"),
            "apiserver_vmrss_mib": status_mib(self.all[1].1, "VmRSS:"),
            "etcd_vmrss_mib": status_mib(self.all[2].1, "VmRSS:"),
        })
    }
}

// ---------------------------------------------------------------------------------------------------
// metrics scrapes

/// The API server's `apiserver_request_total`, summed by "VERB resource[/subresource]".
async fn apiserver_requests(client: &Client) -> BTreeMap<String, f64> {
    let req = match kube::core::Request::new("").get("metrics", &Default::default()) {
        Ok(r) => r,
        Err(_) => return BTreeMap::new(),
    };
    let text = client.request_text(req).await.unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((_, labels, v)) = parse_sample(line) else { continue };
        let resource = match labels.get("subresource").filter(|s| !s.is_empty()) {
            Some(sub) => format!("{}/{sub}", labels.get("resource").unwrap_or(&"")),
            None => labels.get("resource").unwrap_or(&"").to_string(),
        };
        *out.entry(format!("{} {resource}", labels.get("verb").unwrap_or(&""))).or_insert(0.0) += v;
    }
    out
}

fn delta_map(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter().map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0))).filter(|(_, v)| *v > 0.0).collect()
}

/// The operator's reconciles by result and the reconcile duration's sum and count.
fn operator_metrics(admin: &str) -> BTreeMap<String, f64> {
    let (_, text) = e2e::curl(&[&format!("{admin}/metrics")]);
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((name, labels, v)) = parse_sample(line) else { continue };
        match name {
            "csp_operator_reconciles_total" => {
                out.insert(format!("reconciles_{}", labels.get("result").unwrap_or(&"")), v);
            }
            "csp_operator_reconcile_duration_seconds_sum" => {
                out.insert("reconcile_seconds_sum".into(), v);
            }
            "csp_operator_reconcile_duration_seconds_count" => {
                out.insert("reconcile_count".into(), v);
            }
            "csp_operator_contracts" if labels.get("condition") == Some(&"Programmed") => {
                out.insert(format!("programmed_{}", labels.get("status").unwrap_or(&"")), v);
            }
            _ => {}
        }
    }
    out
}

/// What happened during one phase: CPU, memory, API requests, reconciles.
struct Sampler<'a> {
    procs: &'a Procs,
    client: &'a Client,
    admin: &'a str,
    cpu: CpuSnap,
    requests: BTreeMap<String, f64>,
    operator: BTreeMap<String, f64>,
    start: Instant,
}

impl<'a> Sampler<'a> {
    async fn start(procs: &'a Procs, client: &'a Client, admin: &'a str) -> Self {
        let requests = apiserver_requests(client).await;
        let operator = operator_metrics(admin);
        Self { procs, client, admin, cpu: procs.snap(), requests, operator, start: Instant::now() }
    }

    async fn finish(self) -> Value {
        let cpu = self.procs.delta(&self.cpu, &self.procs.snap());
        let wall = self.start.elapsed().as_secs_f64();
        let requests = delta_map(&self.requests, &apiserver_requests(self.client).await);
        let operator = delta_map(&self.operator, &operator_metrics(self.admin));
        json!({"wall_s": wall, "cpu_s": cpu, "memory": self.procs.memory(), "apiserver_requests": requests, "operator": operator})
    }
}

// ---------------------------------------------------------------------------------------------------
// watches

#[derive(Debug)]
enum Seen {
    /// A contract is Programmed for this generation.
    Programmed { key: String, generation: i64, at: Instant },
    /// A ConfigMap carries this version.
    ConfigMap { key: String, version: String, at: Instant },
    /// A watch has listed.
    Synced(&'static str),
}

fn programmed_generation(c: &ChannelContract) -> Option<i64> {
    let generation = c.metadata.generation?;
    let status = c.status.as_ref()?;
    status
        .conditions
        .iter()
        .any(|k| k.type_ == "Programmed" && k.status == "True" && k.observed_generation == Some(generation))
        .then_some(generation)
}

fn watch_contracts(client: Client, run_id: &str, tx: mpsc::UnboundedSender<Seen>) {
    let cfg = watcher::Config::default().labels(&format!("{RUN_LABEL}={run_id}"));
    let stream = watcher(Api::<ChannelContract>::all(client), cfg).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let at = Instant::now();
            match event {
                Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => {
                    if let Some(generation) = programmed_generation(&c) {
                        let key = format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any());
                        let _ = tx.send(Seen::Programmed { key, generation, at });
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    let _ = tx.send(Seen::Synced("ChannelContract"));
                }
                Ok(_) => {}
                Err(e) => log(format!("contract watch: {e}")),
            }
        }
    });
}

fn watch_config_maps(client: Client, tx: mpsc::UnboundedSender<Seen>) {
    let cfg = watcher::Config::default().labels(MANAGED_CONFIG_MAPS);
    let stream = watcher(Api::<PartialObjectMeta<ConfigMap>>::all(client), cfg).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let at = Instant::now();
            match event {
                Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => {
                    let key = format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any());
                    let version = m.annotations().get(CONFIG_VERSION_ANNOTATION).cloned().unwrap_or_default();
                    let _ = tx.send(Seen::ConfigMap { key, version, at });
                }
                Ok(watcher::Event::InitDone) => {
                    let _ = tx.send(Seen::Synced("ConfigMap"));
                }
                Ok(_) => {}
                Err(e) => log(format!("ConfigMap watch: {e}")),
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------------
// the API benchmark

struct Bench {
    client: Client,
    args: ApiArgs,
    load: Load,
    /// Where the watches report (the ConfigMap watch starts with the edits).
    sender: mpsc::UnboundedSender<Seen>,
}

impl Bench {
    fn namespace(&self, i: usize) -> String {
        self.load.namespace(i)
    }

    fn key(&self, i: usize) -> String {
        self.load.key(i)
    }

    async fn setup(&self, contracts: usize) -> Result<Value> {
        self.load.setup(contracts).await
    }

    fn contract(&self, i: usize) -> Result<ChannelContract> {
        self.load.contract(i)
    }

    /// Creates contracts `from..to` and waits until all of `0..to` are Programmed.
    async fn step(
        &self,
        from: usize,
        to: usize,
        rx: &mut mpsc::UnboundedReceiver<Seen>,
        programmed: &mut HashMap<String, (i64, Instant)>,
    ) -> Result<Value> {
        let objects: Vec<(usize, ChannelContract)> =
            (from..to).map(|i| Ok((i, self.contract(i)?))).collect::<Result<_>>()?;
        let start = Instant::now();
        let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
        let create = {
            let sent = sent.clone();
            let client = self.client.clone();
            let concurrency = self.args.concurrency;
            let keys: Vec<String> = (from..to).map(|i| self.key(i)).collect();
            async move {
                let pp = PostParams::default();
                let mut results = stream::iter(objects.into_iter().zip(keys))
                    .map(|((_, c), key)| {
                        let (client, pp, sent) = (client.clone(), pp.clone(), sent.clone());
                        async move {
                            let api: Api<ChannelContract> = Api::namespaced(client, &c.namespace().unwrap_or_default());
                            sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, Instant::now());
                            api.create(&pp, &c)
                                .await
                                .with_context(|| format!("create ChannelContract {}", c.name_any()))
                        }
                    })
                    .buffer_unordered(concurrency);
                while let Some(r) = results.next().await {
                    r?;
                }
                anyhow::Ok(start.elapsed())
            }
        };
        let wait = async {
            let deadline = start + Duration::from_secs(self.args.step_timeout_secs);
            let mut next_log = Instant::now() + Duration::from_secs(5);
            let count = |p: &HashMap<String, (i64, Instant)>| (0..to).filter(|i| p.contains_key(&self.key(*i))).count();
            let mut done = count(programmed);
            while done < to {
                let Ok(Some(seen)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else { break };
                if let Seen::Programmed { key, generation, at } = seen
                    && !programmed.contains_key(&key)
                {
                    programmed.insert(key, (generation, at));
                    done += 1;
                }
                if Instant::now() >= next_log {
                    log(format!("step {to}: {done}/{to} programmed after {:.1} s", start.elapsed().as_secs_f64()));
                    next_log += Duration::from_secs(5);
                }
            }
            (done, start.elapsed())
        };
        let (created, (done, took)) = tokio::join!(create, wait);
        let created = created?;
        let sent = sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let latencies: Vec<f64> = (from..to)
            .filter_map(|i| {
                let key = self.key(i);
                Some(programmed.get(&key)?.1.duration_since(*sent.get(&key)?).as_secs_f64() * 1e3)
            })
            .collect();
        let last = (from..to).filter_map(|i| programmed.get(&self.key(i)).map(|p| p.1)).max();
        log(format!(
            "step {to}: created {} in {:.1} s; {done}/{to} programmed; last after {:.1} s",
            to - from,
            created.as_secs_f64(),
            last.map_or(f64::NAN, |l| l.duration_since(start).as_secs_f64())
        ));
        Ok(json!({
            "contracts_before": from, "contracts_after": to, "created": to - from,
            "create_s": created.as_secs_f64(),
            "all_programmed": done == to,
            "programmed": done,
            "time_to_all_programmed_s": if done == to { last.map(|l| l.duration_since(start).as_secs_f64()) } else { None },
            "waited_s": took.as_secs_f64(),
            "create_to_programmed_ms": stats(&latencies),
        }))
    }

    /// Edits one contract at a time; measures until the ConfigMap and the status follow.
    async fn edits(&self, total: usize, rx: &mut mpsc::UnboundedReceiver<Seen>) -> Result<Value> {
        watch_config_maps(self.client.clone(), self.sender.clone());
        let mut versions: HashMap<String, String> = HashMap::new();
        let mut generations: HashMap<String, i64> = HashMap::new();
        let mut synced = false;
        let note =
            |seen: Seen, versions: &mut HashMap<String, String>, generations: &mut HashMap<String, i64>| match seen {
                Seen::ConfigMap { key, version, .. } => {
                    versions.insert(key, version);
                }
                Seen::Programmed { key, generation, .. } => {
                    let g = generations.entry(key).or_insert(generation);
                    *g = (*g).max(generation);
                }
                Seen::Synced(_) => {}
            };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !synced {
            let Ok(Some(seen)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else {
                bail!("the ConfigMap watch did not list within 120 s")
            };
            synced = matches!(seen, Seen::Synced("ConfigMap"));
            note(seen, &mut versions, &mut generations);
        }
        log(format!(
            "ConfigMap watch synced: {} ConfigMaps; editing {} contracts one at a time",
            versions.len(),
            self.args.edits
        ));
        let mut to_config_map = Vec::new();
        let mut to_programmed = Vec::new();
        let mut patch_ms = Vec::new();
        let mut failures = Vec::new();
        for k in 0..self.args.edits {
            while let Ok(seen) = rx.try_recv() {
                note(seen, &mut versions, &mut generations);
            }
            // A stride coprime with the count: every edit a different contract, across namespaces.
            let i = (k * 7_919 + 17) % total;
            let (ns, name) = (self.namespace(i), fixtures::contract_name(i));
            let key = format!("{ns}/{name}");
            let cm_key = format!("{ns}/{name}-envoy");
            let Some(old) = versions.get(&cm_key).cloned() else {
                failures.push(format!("{cm_key}: no ConfigMap before the edit"));
                continue;
            };
            let latency = format!("{}ms", 300 + k);
            let api: Api<ChannelContract> = Api::namespaced(self.client.clone(), &ns);
            let t0 = Instant::now();
            let patched = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"sla": {"maxLatency": latency}}})))
                .await
                .with_context(|| format!("patch {key}"))?;
            let t_patch = t0.elapsed();
            let generation = patched.metadata.generation.unwrap_or_default();
            let deadline = t0 + Duration::from_secs(self.args.edit_timeout_secs);
            let (mut cm_at, mut prog_at) = (None, None);
            while cm_at.is_none() || prog_at.is_none() {
                let Ok(Some(seen)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else { break };
                match &seen {
                    Seen::ConfigMap { key: c, version, at } if *c == cm_key && *version != old && cm_at.is_none() => {
                        cm_at = Some(*at);
                    }
                    Seen::Programmed { key: c, generation: g, at }
                        if *c == key && *g >= generation && prog_at.is_none() =>
                    {
                        prog_at = Some(*at);
                    }
                    _ => {}
                }
                note(seen, &mut versions, &mut generations);
            }
            patch_ms.push(t_patch.as_secs_f64() * 1e3);
            match (cm_at, prog_at) {
                (Some(c), Some(p)) => {
                    to_config_map.push(c.duration_since(t0).as_secs_f64() * 1e3);
                    to_programmed.push(p.duration_since(t0).as_secs_f64() * 1e3);
                }
                _ => failures.push(format!(
                    "{key}: after {} s ConfigMap {}, Programmed {}",
                    self.args.edit_timeout_secs,
                    if cm_at.is_some() { "updated" } else { "NOT updated" },
                    if prog_at.is_some() { "seen" } else { "NOT seen" }
                )),
            }
            if (k + 1) % 50 == 0 {
                let s = stats(&to_config_map);
                log(format!("{} edits: edit -> ConfigMap p50 {:.0} ms, p99 {:.0} ms", k + 1, s.p50, s.p99));
            }
        }
        Ok(json!({
            "edits": self.args.edits,
            "contracts_present": total,
            "edit_to_config_map_ms": stats(&to_config_map),
            "edit_to_programmed_ms": stats(&to_programmed),
            "patch_ms": stats(&patch_ms),
            "failures": failures,
        }))
    }
}

async fn api(client: Client, args: &ApiArgs) -> Result<(Value, String)> {
    let mut steps = args.steps.clone();
    steps.sort_unstable();
    let Some(&total) = steps.last() else { bail!("--steps is empty") };
    let procs = Procs::new(args)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let load = Load {
        client: client.clone(),
        run_id: args.run_id.clone(),
        namespaces: args.namespaces,
        nodes_per_region: args.nodes_per_region,
        concurrency: args.concurrency,
        tolerate_existing: false,
        who: "bench_operator",
    };
    let bench = Bench { client: client.clone(), args: args.clone(), load, sender: tx.clone() };

    log(format!(
        "setup: {} Nodes, {} namespaces, {} Services and {} EndpointSlices ({} endpoints each)",
        3 * args.nodes_per_region,
        args.namespaces,
        3 * total,
        3 * total,
        fixtures::ENDPOINTS_PER_CHANNEL
    ));
    let sampler = Sampler::start(&procs, &client, &args.operator_admin).await;
    let setup = bench.setup(total).await?;
    // Let the operator's caches take the last events in.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let setup_sample = sampler.finish().await;
    log(format!("after setup: {}", setup_sample["memory"]));

    watch_contracts(client.clone(), &args.run_id, tx.clone());
    loop {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(Seen::Synced(_))) => break,
            Ok(Some(_)) => {}
            _ => bail!("the ChannelContract watch did not list within 60 s"),
        }
    }

    let mut programmed = HashMap::new();
    let mut step_results = Vec::new();
    let mut from = 0;
    for &to in &steps {
        log(format!("step: contracts {from}..{to}"));
        let sampler = Sampler::start(&procs, &client, &args.operator_admin).await;
        let mut result = bench.step(from, to, &mut rx, &mut programmed).await?;
        // The operator may still be writing (Events, second reconciles): a moment for the books.
        tokio::time::sleep(Duration::from_secs(2)).await;
        result["sample"] = sampler.finish().await;
        log(format!("after step {to}: {}", result["sample"]["memory"]));
        step_results.push(result);
        from = to;
    }

    log("edits");
    let sampler = Sampler::start(&procs, &client, &args.operator_admin).await;
    let mut edits = bench.edits(total, &mut rx).await?;
    edits["sample"] = sampler.finish().await;

    let json = json!({
        "run_id": args.run_id,
        "namespaces": args.namespaces,
        "setup": setup, "setup_sample": setup_sample,
        "steps": step_results,
        "edits": edits,
        "final_memory": procs.memory(),
    });
    let md = markdown(&json, args);
    Ok((json, md))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn markdown(j: &Value, args: &ApiArgs) -> String {
    let mut md = String::new();
    let total = args.steps.iter().max().copied().unwrap_or(0);
    md += &format!(
        "Setup: {} Nodes (gz, sz, hz), {} namespaces, {} headless selector-less Services and {} EndpointSlices ({} ready endpoints each) created in {:.1} s before any contract; operator VmHWM after setup {:.1} MiB.\n\n",
        j["setup"]["nodes"],
        args.namespaces,
        j["setup"]["services"],
        j["setup"]["endpoint_slices"],
        fixtures::ENDPOINTS_PER_CHANNEL,
        f(&j["setup_sample"]["wall_s"]),
        f(&j["setup_sample"]["memory"]["operator_vmhwm_mib"])
    );
    md += "### Time to Programmed\n\n";
    md += &format!(
        "Contracts created with {} requests in flight (kube-rs); Programmed seen on a watch (condition Programmed=True for the current generation).\n\n",
        args.concurrency
    );
    md += "| step | contracts created | create time (s) | time until all Programmed (s) | contracts/s | create→Programmed p50 / p99 (ms) | operator VmHWM (MiB) | operator reconciles (ok) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
    let mut cumulative = 0.0;
    for s in j["steps"].as_array().into_iter().flatten() {
        let t = f(&s["time_to_all_programmed_s"]);
        cumulative += t;
        let l = &s["create_to_programmed_ms"];
        md += &format!(
            "| {} → {} | {} | {:.1} | {} | {:.0} | {:.0} / {:.0} | {:.1} | {:.0} |\n",
            s["contracts_before"],
            s["contracts_after"],
            s["created"],
            f(&s["create_s"]),
            if s["all_programmed"].as_bool() == Some(true) {
                format!("{t:.1}")
            } else {
                format!("**not all** ({} programmed)", s["programmed"])
            },
            f(&s["created"]) / t,
            f(&l["p50"]),
            f(&l["p99"]),
            f(&s["sample"]["memory"]["operator_vmhwm_mib"]),
            f(&s["sample"]["operator"]["reconciles_ok"]),
        );
    }
    md += &format!(
        "\nSum over the steps (all {total} contracts, the API server never idle in between): **{cumulative:.1} s**.\n\n"
    );

    md += "### Where the time goes (CPU seconds per phase)\n\n";
    md += "| phase | wall (s) | operator | kube-apiserver | etcd | kube-controller-manager | driver | other processes | machine busy / capacity |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    let mut phases: Vec<(String, &Value)> = vec![("setup".into(), &j["setup_sample"])];
    for s in j["steps"].as_array().into_iter().flatten() {
        phases.push((format!("contracts {} → {}", s["contracts_before"], s["contracts_after"]), &s["sample"]));
    }
    phases.push((format!("{} edits", args.edits), &j["edits"]["sample"]));
    for (name, s) in &phases {
        let c = &s["cpu_s"];
        md += &format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} |\n",
            f(&s["wall_s"]),
            f(&c["operator"]),
            f(&c["kube-apiserver"]),
            f(&c["etcd"]),
            f(&c["kube-controller-manager"]),
            f(&c["driver"]),
            f(&c["others"]),
            f(&c["machine_busy"]),
            f(&c["machine_capacity"]),
        );
    }
    md += "\n### API requests per phase (kube-apiserver `apiserver_request_total`, all clients)\n\n";
    md += "| phase | top requests |\n|---|---|\n";
    for (name, s) in &phases {
        let mut reqs: Vec<(String, f64)> =
            s["apiserver_requests"].as_object().into_iter().flatten().map(|(k, v)| (k.clone(), f(v))).collect();
        reqs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = reqs.iter().take(8).map(|(k, v)| format!("{k}: {v:.0}")).collect();
        md += &format!("| {name} | {} |\n", top.join(", "));
    }
    md += "\n### Operator reconciles per phase (its /metrics)\n\n";
    md += "| phase | reconciles ok | invalid input | error | mean reconcile (ms) |\n|---|---:|---:|---:|---:|\n";
    for (name, s) in &phases {
        let o = &s["operator"];
        let n = f(&o["reconcile_count"]);
        md += &format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {} |\n",
            o["reconciles_ok"].as_f64().unwrap_or(0.0),
            o["reconciles_invalid_input"].as_f64().unwrap_or(0.0),
            o["reconciles_error"].as_f64().unwrap_or(0.0),
            if n > 0.0 { format!("{:.1}", f(&o["reconcile_seconds_sum"]) / n * 1e3) } else { "–".into() },
        );
    }
    let e = &j["edits"];
    md += &format!(
        "\n### Edit → ConfigMap ({} edits of `spec.sla.maxLatency`, one at a time, {} contracts present)\n\n",
        e["edits"], e["contracts_present"]
    );
    md += "Clock from just before the PATCH to the watch event (ConfigMap: a metadata watch, new `csp.contracts.dev/config-version`; status: Programmed for the new generation).\n\n";
    md += "| measure | n | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | mean (ms) |\n|---|---:|---:|---:|---:|---:|---:|\n";
    for (name, k) in [
        ("PATCH answered", "patch_ms"),
        ("edit → ConfigMap updated", "edit_to_config_map_ms"),
        ("edit → status Programmed", "edit_to_programmed_ms"),
    ] {
        let s = &e[k];
        md += &format!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            s["n"],
            f(&s["p50"]),
            f(&s["p90"]),
            f(&s["p99"]),
            f(&s["max"]),
            f(&s["mean"])
        );
    }
    let failures = e["failures"].as_array().map_or(0, Vec::len);
    if failures > 0 {
        md += &format!("\n{failures} edits did not complete: {}\n", e["failures"]);
    }
    md += &format!(
        "\nOperator memory at the end: VmHWM (peak RSS) **{:.1} MiB**, VmRSS {:.1} MiB (kube-apiserver VmRSS {:.0} MiB, etcd {:.0} MiB).\n",
        f(&j["final_memory"]["operator_vmhwm_mib"]),
        f(&j["final_memory"]["operator_vmrss_mib"]),
        f(&j["final_memory"]["apiserver_vmrss_mib"]),
        f(&j["final_memory"]["etcd_vmrss_mib"]),
    );
    md
}
