//! Chaos for the end-to-end tests (`e2e/tests/chaos.rs`, `make chaos`): kill -9 of a control plane's
//! etcd or API server (`e2e/cluster.sh kill|restart`), product processes killed and started again with
//! the same command line ([`Restartable`]), a watch that notices any published ConfigMap emptied or lost
//! ([`ConfigMapWatch`]), real Envoys fed over xDS with their backends ([`ProxyBed`]), and the counts each
//! scenario reports ([`record`]: printed, and appended as a JSON line to the file `CSP_CHAOS_RESULTS`
//! names, which `bench/chaos.sh` turns into a report).
//!
//! Every scenario runs on a control plane of its own ([`ControlPlane`]): it kills it.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::backend::{self, Backend};
use crate::fleet::ControlPlane;
use crate::netns::NetworkNamespace;
use crate::testbed::{REGIONS, Reply, requests};
use crate::xds::{AdsEnvoy, HostLink, ProxySpec, XdsCerts};
use crate::{Run, Tied, curl, free_port, product_bin, rbac, repo_root, run, unique, wait_until};

/// How hard the scenarios push: the short default (CI, `make test`) or `CSP_CHAOS=long` (`make chaos`).
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// `CSP_CHAOS=long`.
    pub long: bool,
    /// Contracts reconciling while the API server and etcd are killed.
    pub contracts: usize,
    /// Kill rounds per scenario.
    pub rounds: usize,
    /// How long a killed process stays down.
    pub down: Duration,
    /// Contracts edited continuously while the operator leader is killed.
    pub churned: usize,
    /// Admission load before and after the webhook's outage.
    pub load: Duration,
}

impl Scale {
    /// From `CSP_CHAOS`.
    pub fn from_env() -> Self {
        if std::env::var("CSP_CHAOS").is_ok_and(|v| v == "long") {
            Self {
                long: true,
                contracts: 1000,
                rounds: 3,
                down: Duration::from_secs(10),
                churned: 200,
                load: Duration::from_secs(15),
            }
        } else {
            Self {
                long: false,
                contracts: 150,
                rounds: 1,
                down: Duration::from_secs(3),
                churned: 40,
                load: Duration::from_secs(4),
            }
        }
    }

    /// `long` or `short`.
    pub fn name(&self) -> &'static str {
        if self.long { "long" } else { "short" }
    }
}

/// Seconds, rounded to milliseconds, for the reports.
pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Prints a scenario's counts and appends them as one JSON line to `CSP_CHAOS_RESULTS`, if set.
pub fn record(scenario: &str, scale: &Scale, counts: Value) {
    let mut line = json!({"scenario": scenario, "scale": scale.name()});
    if let (Some(line), Some(counts)) = (line.as_object_mut(), counts.as_object()) {
        line.extend(counts.clone());
    }
    println!("chaos {scenario}: {line}");
    if let Some(path) = std::env::var_os("CSP_CHAOS_RESULTS") {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", Path::new(&path).display()));
        file.write_all(format!("{line}\n").as_bytes()).expect("append the chaos results");
    }
}

/// A scenario's control plane (etcd, API server, controller manager; the CRDs and the chart's RBAC) and
/// folder, both of its own under `target/chaos/<name>-<pid>-<n>/` (the control plane's state in `cp/`):
/// not under `e2e/.run`, which bringing the shared cluster up wipes.
#[derive(Debug)]
pub struct Stage {
    /// The control plane.
    pub cp: ControlPlane,
    /// The scenario's folder: logs, certificates, kubeconfigs.
    pub dir: PathBuf,
}

impl Stage {
    /// Starts the control plane and installs the CRDs and the chart's RBAC.
    pub fn start(name: &str) -> Self {
        let dir = repo_root().join("target/chaos").join(unique(name));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let cp = ControlPlane::start_in(name, dir.join("cp"), false);
        cp.install(&[]);
        Self { cp, dir }
    }

    /// A kubeconfig of the chart's ServiceAccount `service_account` (a TokenRequest token), in the folder.
    pub fn service_account(&self, service_account: &str) -> PathBuf {
        let path = self.dir.join(format!("{service_account}.kubeconfig"));
        let text = rbac::service_account_kubeconfig(&self.cp.kubeconfig(), rbac::NAMESPACE, service_account);
        rbac::write_private(&path, &text);
        path
    }
}

/// Sets its flag when dropped: threads of a scope that loop until the flag is set end even when the
/// scenario panics (a scope waits for its threads before it passes a panic on).
#[derive(Debug)]
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Drop for Stage {
    /// Stops the control plane; the folder goes too unless the scenario failed (its logs tell why).
    fn drop(&mut self) {
        self.cp.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn cluster_sh(cp: &ControlPlane, args: &[&str]) -> Run {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("e2e/cluster.sh")).args(args).env("CSP_RUN_DIR", &cp.dir).env("CSP_NODE", "0");
    run(cmd, None)
}

/// `kill -9` of one of the control plane's processes (`etcd`, `kube-apiserver`).
pub fn kill(cp: &ControlPlane, process: &str) {
    cluster_sh(cp, &["kill", process]).ok();
}

/// Starts it again with the same command line and waits until it is healthy; returns how long that took.
pub fn restart(cp: &ControlPlane, process: &str) -> Duration {
    let started = Instant::now();
    cluster_sh(cp, &["restart", process]).ok();
    started.elapsed()
}

/// A product process that can be killed (SIGKILL) or stopped (SIGTERM) and started again with the same
/// command line and environment; each start logs to a file of its own.
#[derive(Debug)]
pub struct Restartable {
    /// The running process.
    pub process: Tied,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: PathBuf,
    name: String,
    starts: u32,
}

impl Restartable {
    /// Starts `program args` with `env` (besides the inherited one), logging to `<dir>/<name>-1.log`.
    pub fn spawn(program: &Path, args: Vec<String>, env: Vec<(String, String)>, dir: &Path, name: &str) -> Self {
        let process = spawn_with(program, &args, &env, &dir.join(format!("{name}-1.log")));
        Self {
            process,
            program: program.to_path_buf(),
            args,
            env,
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            starts: 1,
        }
    }

    /// `kill -9`, and waits until it is gone.
    pub fn kill9(&mut self) {
        let pid = self.process.pid.expect("the process's pid").to_string();
        let mut cmd = Command::new("kill");
        cmd.args(["-KILL", &pid]);
        run(cmd, None).ok();
        wait_until(&format!("{} to die", self.name), Duration::from_secs(10), || {
            (!self.process.running()).then_some(())
        });
    }

    /// SIGTERM, and waits until it exits.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts it again, the same way.
    pub fn start_again(&mut self) {
        self.starts += 1;
        let log = self.dir.join(format!("{}-{}.log", self.name, self.starts));
        self.process = spawn_with(&self.program, &self.args, &self.env, &log);
    }

    /// Panics with its log unless it runs.
    pub fn assert_running(&mut self) {
        assert!(self.process.running(), "{} exited:\n{}", self.name, self.process.log_tail());
    }

    /// The last lines of its current log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

fn spawn_with(program: &Path, args: &[String], env: &[(String, String)], log: &Path) -> Tied {
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    Tied::spawn(program, args, &env, log)
}

/// Which build of a product binary runs, and with which log filter (RUST_LOG).
#[derive(Debug, Clone)]
pub struct Build {
    /// The binary.
    pub bin: PathBuf,
    /// Its RUST_LOG.
    pub log_filter: String,
}

impl Build {
    /// The debug build the e2e tests run (`e2e/.bin`'s product binaries), logging `<name>=debug`.
    pub fn debug(name: &str) -> Self {
        Self { bin: product_bin(name), log_filter: format!("info,{name}=debug,kube=warn") }
    }
}

/// The webhook as the chart's webhook ServiceAccount, on a free loopback port with a serving certificate
/// of a CA of its own.
#[derive(Debug)]
pub struct Webhook {
    /// The process.
    pub process: Restartable,
    /// Its HTTPS port on 127.0.0.1 (kept across restarts).
    pub port: u16,
    /// The CA that signed its certificate.
    pub ca_file: PathBuf,
}

impl Webhook {
    /// Starts the debug build with the kubeconfig `kubeconfig`, its files in `dir`, auditing every 3 s;
    /// waits until it is ready.
    pub fn start(kubeconfig: &Path, dir: &Path) -> Self {
        Self::start_build(&Build::debug("webhook"), kubeconfig, dir, "3s")
    }

    /// [`start`](Self::start) for `build`, auditing every `audit_interval`.
    pub fn start_build(build: &Build, kubeconfig: &Path, dir: &Path, audit_interval: &str) -> Self {
        let day = Duration::from_secs(86_400);
        let names = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        let (ca, serving) =
            webhook::certs::ca_and_serving("csp-chaos-webhook", &names, day, day).expect("certificates");
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            path.to_string_lossy().into_owned()
        };
        let (ca_file, cert, key) = (
            file("webhook-ca.crt", &ca.cert),
            file("webhook-tls.crt", &serving.cert),
            file("webhook-tls.key", &serving.key),
        );
        let port = free_port();
        let args = [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--namespace",
            rbac::NAMESPACE,
            "--audit-interval",
            audit_interval,
            "--log-format",
            "text",
        ]
        .map(str::to_owned)
        .to_vec();
        let env = vec![
            ("KUBECONFIG".to_owned(), kubeconfig.to_string_lossy().into_owned()),
            ("CSP_WEBHOOK_AUDIT_LEASE".to_owned(), rbac::webhook_audit_lease()),
            ("POD_NAME".to_owned(), unique("webhook")),
            ("RUST_LOG".to_owned(), build.log_filter.clone()),
        ];
        let process = Restartable::spawn(&build.bin, args, env, dir, "webhook");
        let mut webhook = Self { process, port, ca_file: PathBuf::from(ca_file) };
        webhook.wait_ready();
        webhook
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until `/readyz` answers 200 (its caches synced).
    pub fn wait_ready(&mut self) {
        let (ca, url) = (self.ca_file.to_string_lossy().into_owned(), self.url("/readyz"));
        wait_until("the webhook to be ready", Duration::from_secs(60), || {
            self.process.assert_running();
            (curl(&["--cacert", &ca, &url]).0 == 200).then_some(())
        });
    }
}

/// `operator run` as the chart's operator ServiceAccount of a control plane.
#[derive(Debug)]
pub struct Operator {
    /// The process.
    pub process: Restartable,
    /// Its admin port on 127.0.0.1 (kept across restarts).
    pub admin_port: u16,
    /// Its xDS port (kept across restarts), 0 without xDS.
    pub xds_port: u16,
}

impl Operator {
    /// Starts the debug build publishing to `publish` (`configmap`, `xds` or both), serving xDS over TLS
    /// with `certs` when given, with `extra` arguments; waits until it is ready.
    pub fn start(
        kubeconfig: &Path,
        dir: &Path,
        name: &str,
        publish: &str,
        certs: Option<&XdsCerts>,
        extra: &[String],
    ) -> Self {
        Self::start_build(&Build::debug("operator"), kubeconfig, dir, name, publish, certs, extra)
    }

    /// [`start`](Self::start) for `build`.
    pub fn start_build(
        build: &Build,
        kubeconfig: &Path,
        dir: &Path,
        name: &str,
        publish: &str,
        certs: Option<&XdsCerts>,
        extra: &[String],
    ) -> Self {
        let admin_port = free_port();
        let mut args: Vec<String> = vec![
            "run".into(),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin_port}"),
            "--log-format".into(),
            "text".into(),
            "--publish".into(),
            publish.into(),
        ];
        let mut xds_port = 0;
        if let Some(certs) = certs {
            xds_port = free_port();
            args.extend([
                "--xds-listen".into(),
                format!("0.0.0.0:{xds_port}"),
                "--xds-tls-cert".into(),
                certs.cert.to_string_lossy().into_owned(),
                "--xds-tls-key".into(),
                certs.key.to_string_lossy().into_owned(),
            ]);
        }
        args.extend_from_slice(extra);
        let env = vec![
            ("KUBECONFIG".to_owned(), kubeconfig.to_string_lossy().into_owned()),
            ("RUST_LOG".to_owned(), build.log_filter.clone()),
        ];
        let process = Restartable::spawn(&build.bin, args, env, dir, name);
        let mut operator = Self { process, admin_port, xds_port };
        operator.wait_ready();
        operator
    }

    /// Waits until `/readyz` answers 200 (its watches synced).
    pub fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        wait_until("the operator to be ready", Duration::from_secs(90), || {
            self.process.assert_running();
            (curl(&[&url]).0 == 200).then_some(())
        });
    }

    /// The value of a metric series (`name{labels}` exactly as exposed), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let metrics = curl(&[&format!("http://127.0.0.1:{}/metrics", self.admin_port)]).1;
        metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Whether it holds the leader Lease (its metric says so).
    pub fn leads(&self) -> bool {
        self.metric("csp_operator_leader") == Some(1.0)
    }
}

/// A namespace of a control plane with Nodes per region, backends and real Envoys fed over xDS in a
/// network namespace joined to the host.
#[derive(Debug)]
pub struct ProxyBed {
    /// The proxies.
    pub proxies: Vec<AdsEnvoy>,
    backends: Vec<Backend>,
    link: HostLink,
    /// The network namespace.
    pub netns: NetworkNamespace,
    /// The Kubernetes namespace.
    pub namespace: String,
    dir: PathBuf,
    kubeconfig: PathBuf,
    next_host: u8,
}

impl ProxyBed {
    /// Creates namespace `namespace` and a Node per region on `cp`.
    pub fn new(cp: &ControlPlane, namespace: &str, dir: &Path) -> Self {
        cp.namespace(namespace, &[]);
        for region in REGIONS {
            let yaml = format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {namespace}-{region}\n  labels:\n    {}: {region}\n",
                crds::REGION_LABEL
            );
            cp.kubectl(&["apply", "-f", "-"], Some(&yaml)).ok();
        }
        let netns = NetworkNamespace::create();
        let link = HostLink::new(&netns);
        Self {
            proxies: Vec::new(),
            backends: Vec::new(),
            link,
            netns,
            namespace: namespace.to_owned(),
            dir: dir.to_path_buf(),
            kubeconfig: cp.kubeconfig(),
            next_host: 10,
        }
    }

    /// Starts a backend.
    pub fn backend(&mut self, name: &str) {
        let address = NetworkNamespace::address(self.next_host);
        self.next_host += 1;
        self.backends.push(Backend::start(&product_bin("backend"), &self.netns, name, &address, &self.dir));
    }

    /// A Service on `port` whose endpoints are these backends, on the gz Node.
    pub fn service(&self, name: &str, port: u16, backends: &[&str]) {
        let ns = &self.namespace;
        let mut yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: {port}, targetPort: {target}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports: [{{name: http, port: {target}, protocol: TCP}}]\nendpoints:\n",
            target = backend::PORT
        );
        for b in backends {
            let address =
                &self.backends.iter().find(|x| x.name == *b).unwrap_or_else(|| panic!("no backend {b}")).address;
            yaml += &format!("- addresses: [{address}]\n  conditions: {{ready: true}}\n  nodeName: {ns}-gz\n");
        }
        crate::kubectl_at(&self.kubeconfig, &["apply", "-f", "-"], Some(&yaml)).ok();
    }

    /// Applies ChannelContract `name` for Service `name` on `port`, with `sla.maxLatency`.
    pub fn contract(&self, name: &str, port: u16, max_latency: &str) {
        let yaml = format!(
            "apiVersion: csp.contracts.dev/v1alpha1\nkind: ChannelContract\nmetadata: {{name: {name}, namespace: {}}}\nspec:\n  service: {name}\n  port: {port}\n  sla: {{maxLatency: {max_latency}}}\n",
            self.namespace
        );
        crate::kubectl_at(&self.kubeconfig, &["apply", "-f", "-"], Some(&yaml)).ok();
    }

    /// Starts an Envoy in gz, fed by `operator` over delta ADS (TLS, trusting `ca`), listening on
    /// 10.77.0.`host`; returns its index.
    pub fn proxy(&mut self, operator: &Operator, ca: &Path, name: &str, host: u8) -> usize {
        let spec = ProxySpec::new(name, "gz", host, free_port());
        let bootstrap = AdsEnvoy::bootstrap(&spec, &self.namespace, &self.link.host, operator.xds_port, ca);
        self.proxies.push(AdsEnvoy::start(&self.netns, &self.dir, spec, &bootstrap));
        self.proxies.len() - 1
    }

    /// `n` requests through proxy `proxy` for Service `service` on `port`.
    pub fn get(&self, proxy: usize, service: &str, port: u16, n: usize) -> Vec<Reply> {
        let url = format!("http://{}:{port}/", NetworkNamespace::address(self.proxies[proxy].spec.host));
        let authority = format!("{service}.{}:{port}", self.namespace);
        requests(&self.netns, &url, n, &[("Host", authority.as_str())])
    }

    /// Waits until 5 requests in a row through `proxy` for `service` are answered 200 by `backend`.
    pub fn settle(&self, proxy: usize, service: &str, port: u16, backend: &str) {
        let mut last = Vec::new();
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(&format!("proxy {proxy} to serve {service}"), Duration::from_secs(90), || {
                last = self.get(proxy, service, port, 5);
                last.iter().all(|r| r.status == 200 && r.backend == backend).then_some(())
            })
        }));
        if found.is_err() {
            panic!(
                "{service} never served through proxy {proxy}: {last:?}\n{}",
                self.proxies[proxy].process.log_tail()
            );
        }
    }

    /// The dynamic clusters proxy `proxy` runs, or None when its admin interface does not answer.
    pub fn clusters(&self, proxy: usize) -> Option<usize> {
        let dump = self.proxies[proxy].admin_get("/config_dump?resource=dynamic_active_clusters")?;
        let dump: Value = serde_json::from_str(&dump).ok()?;
        Some(dump["configs"].as_array().map_or(0, Vec::len))
    }

    /// Requests through every (proxy, service, port, backend) in turn, `batch` at a time, until `stop`;
    /// every reply with when it came, and whether it was a 200 from the expected backend.
    pub fn traffic(&self, targets: &[(usize, &str, u16, &str)], stop: &AtomicBool) -> Vec<(Instant, bool, Reply)> {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for (proxy, service, port, backend) in targets {
                let replies = self.get(*proxy, service, *port, 5);
                let at = Instant::now();
                seen.extend(replies.into_iter().map(|r| (at, r.status == 200 && r.backend == *backend, r)));
            }
        }
        seen
    }
}

impl Drop for ProxyBed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.proxies {
                eprintln!("--- proxy {} ---\n{}", p.spec.name, p.process.log_tail());
            }
        }
        self.proxies.clear();
        self.backends.clear();
    }
}

/// What a [`ConfigMapWatch`] saw.
#[derive(Debug, Default, Clone)]
pub struct WatchReport {
    /// Events received (applies, deletes).
    pub events: u64,
    /// (Re)lists: the first, and one after each broken watch.
    pub lists: u64,
    /// Watch errors (the API server or etcd gone).
    pub errors: u64,
    /// The ConfigMaps seen, `namespace/name`.
    pub seen: BTreeSet<String>,
    /// Every ConfigMap seen without a non-empty `cds.yaml`, `lds.yaml`, `rds.yaml` and version
    /// annotation, deleted, or missing from a relist after it had been seen.
    pub violations: Vec<String>,
}

/// A watch (kube-runtime's watcher, as the admin) on the operator's ConfigMaps in every namespace, on a
/// thread of its own; it follows the API server through restarts.
#[derive(Debug)]
pub struct ConfigMapWatch {
    report: Arc<Mutex<WatchReport>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConfigMapWatch {
    /// Starts watching with the admin kubeconfig `kubeconfig`.
    pub fn start(kubeconfig: &Path) -> Self {
        let report = Arc::new(Mutex::new(WatchReport::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (path, shared) = (kubeconfig.to_path_buf(), report.clone());
        let thread = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for the watch");
            runtime.block_on(watch(path, shared, stopped));
        });
        Self { report, stop: Some(stop), thread: Some(thread) }
    }

    /// What it has seen so far.
    pub fn report(&self) -> WatchReport {
        self.report.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Stops it; returns what it saw.
    pub fn stop(mut self) -> WatchReport {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("the watch thread");
        }
        self.report()
    }
}

impl Drop for ConfigMapWatch {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn watch(kubeconfig: PathBuf, report: Arc<Mutex<WatchReport>>, mut stopped: tokio::sync::oneshot::Receiver<()>) {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::{WatchStreamExt, watcher};
    use operator::publish::configmap::{CONFIG_VERSION_ANNOTATION, MANAGED_BY_LABEL, MANAGER};

    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("read the admin kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("a client config");
    let client = kube::Client::try_from(config).expect("a client");
    let api: kube::Api<ConfigMap> = kube::Api::all(client);
    let selector = format!("{MANAGED_BY_LABEL}={MANAGER}");
    let mut events = watcher(api, watcher::Config::default().labels(&selector)).default_backoff().boxed();
    let key = |cm: &ConfigMap| {
        format!(
            "{}/{}",
            cm.metadata.namespace.as_deref().unwrap_or_default(),
            cm.metadata.name.as_deref().unwrap_or_default()
        )
    };
    let check = |cm: &ConfigMap| -> Option<String> {
        let data = cm.data.clone().unwrap_or_default();
        let empty: Vec<&str> = ["cds.yaml", "lds.yaml", "rds.yaml"]
            .into_iter()
            .filter(|k| data.get(*k).is_none_or(|v| v.trim().is_empty()))
            .collect();
        let version = cm.metadata.annotations.as_ref().and_then(|a| a.get(CONFIG_VERSION_ANNOTATION));
        (!empty.is_empty() || version.is_none_or(|v| v.is_empty()))
            .then(|| format!("{}: empty or missing {empty:?} (version annotation {version:?})", key(cm)))
    };
    let mut listed: Option<BTreeSet<String>> = None;
    loop {
        let event = tokio::select! {
            _ = &mut stopped => return,
            event = events.next() => event,
        };
        let Some(event) = event else { return };
        let mut r = report.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            Err(_) => r.errors += 1,
            Ok(watcher::Event::Init) => {
                r.lists += 1;
                listed = Some(BTreeSet::new());
            }
            Ok(watcher::Event::InitApply(cm)) | Ok(watcher::Event::Apply(cm)) => {
                r.events += 1;
                if let Some(v) = check(&cm) {
                    r.violations.push(v);
                }
                if let Some(l) = listed.as_mut() {
                    l.insert(key(&cm));
                }
                r.seen.insert(key(&cm));
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(l) = listed.take() {
                    let missing: Vec<String> = r.seen.difference(&l).cloned().collect();
                    r.violations.extend(missing.into_iter().map(|m| format!("{m}: missing from a relist")));
                }
            }
            Ok(watcher::Event::Delete(cm)) => {
                r.events += 1;
                let v = format!("{}: deleted", key(&cm));
                r.violations.push(v);
            }
        }
    }
}

/// `(programmed for its current generation, all)` of the contracts in `namespace`; None when the API
/// server does not answer.
pub fn programmed(cp: &ControlPlane, namespace: &str) -> Option<(usize, usize)> {
    let r = cp.kubectl(&["get", "chc", "-n", namespace, "-o", "json", "--request-timeout", "20s"], None);
    if !r.success {
        return None;
    }
    let list: Value = serde_json::from_str(&r.stdout).ok()?;
    let items = list["items"].as_array()?;
    let done = items.iter().filter(|c| is_programmed(c)).count();
    Some((done, items.len()))
}

/// Whether a contract is `Programmed=True` for its current generation.
pub fn is_programmed(c: &Value) -> bool {
    let generation = &c["metadata"]["generation"];
    c["status"]["observedGeneration"] == *generation
        && c["status"]["conditions"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["type"] == "Programmed" && x["status"] == "True" && x["observedGeneration"] == *generation)
        })
}

/// Services `<prefix>-<i>` (no endpoints) and/or their contracts (`sla.maxLatency` `latency`), `n` of
/// each, in `namespace`, as YAML.
pub fn bulk(namespace: &str, prefix: &str, n: usize, services: bool, contracts: bool, latency: &str) -> String {
    let mut yaml = String::new();
    for i in 0..n {
        if services {
            yaml += &format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {prefix}-{i}, namespace: {namespace}}}\nspec:\n  ports: [{{name: http, port: 18080, targetPort: 8080}}]\n"
            );
        }
        if contracts {
            yaml += &format!(
                "---\napiVersion: csp.contracts.dev/v1alpha1\nkind: ChannelContract\nmetadata: {{name: {prefix}-{i}, namespace: {namespace}}}\nspec:\n  service: {prefix}-{i}\n  port: 18080\n  sla: {{maxLatency: {latency}}}\n"
            );
        }
    }
    yaml
}

/// The chart's own ValidatingWebhookConfiguration (`helm template`, release [`rbac::RELEASE`]: its
/// failurePolicy, namespaceSelector and rules), calling the webhook at `url` with the CA in `ca_file`.
pub fn chart_webhook_configuration(url: &str, ca_file: &Path) -> String {
    use base64::Engine;
    let ca = std::fs::read(ca_file).unwrap_or_else(|e| panic!("read {}: {e}", ca_file.display()));
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    let chart = repo_root().join("charts/channel-contracts");
    let mut cmd = Command::new(crate::tool("helm"));
    cmd.args(["template", rbac::RELEASE])
        .arg(&chart)
        .args(["--namespace", rbac::NAMESPACE, "--kube-version", &rbac::kubernetes_version(), "-f"])
        .arg(chart.join("ci/local-values.yaml"))
        .args(["--set", &format!("webhook.external.url={url},webhook.caBundle={ca}")])
        .args(["--show-only", "templates/validatingwebhookconfiguration.yaml"]);
    run(cmd, None).ok()
}
