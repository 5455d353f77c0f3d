//! The operator's xDS server as a gateway fleet meets it: operators that serve ADS over TLS
//! ([`XdsOperator`]), and per test an [`XdsBed`]: a Kubernetes namespace with Services, EndpointSlices,
//! Nodes (one per region) and Pods, backends, and real Envoys in the test's network namespace that take
//! everything over ADS from the operator ([`AdsEnvoy`]), with bootstraps from `operator bootstrap`'s code.
//!
//! The Envoys run in the test's network namespace, the operator in the host's: a veth pair joins them
//! ([`HostLink`]), and the Envoys reach the xDS server at the host end's address, checking its
//! certificate for the name [`XDS_SERVER_NAME`] against the test CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use operator::envoy::bootstrap::{AdsBootstrap, AdsTls, XDS_CLUSTER, ads, to_yaml};
use serde_json::Value;

use crate::backend::{self, Backend};
use crate::netns::NetworkNamespace;
use crate::testbed::{NODE_LABEL, REGIONS, Reply, requests};
use crate::{TestNamespace, Tied, curl, free_port, kubectl, product_bin, run_dir, tool, unique, wait_until};

/// The name in the xDS server's test certificate, which proxies check.
pub const XDS_SERVER_NAME: &str = "csp-xds.e2e.test";
/// The label that puts a contract under an xDS operator (value: its id).
pub const CONTRACT_LABEL: &str = "csp-e2e-xds-operator";

/// The test CA and the xDS server's certificate, written once per test process.
#[derive(Debug)]
pub struct XdsCerts {
    /// The CA certificate (proxies trust it).
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// The certificates of this test process.
pub fn certs() -> &'static XdsCerts {
    static C: OnceLock<XdsCerts> = OnceLock::new();
    C.get_or_init(|| write_certs(&run_dir("xds-certs")))
}

/// Writes a new CA and an xDS server certificate for [`XDS_SERVER_NAME`] into `dir`.
pub fn write_certs(dir: &Path) -> XdsCerts {
    {
        let (ca, serving) = webhook::certs::ca_and_serving(
            "csp-xds-e2e",
            &[XDS_SERVER_NAME.to_owned()],
            Duration::from_secs(86_400),
            Duration::from_secs(86_400),
        )
        .expect("generate the xDS certificates");
        let certs = XdsCerts { ca: dir.join("ca.crt"), cert: dir.join("tls.crt"), key: dir.join("tls.key") };
        std::fs::write(&certs.ca, ca.cert).expect("write ca.crt");
        std::fs::write(&certs.cert, serving.cert).expect("write tls.crt");
        std::fs::write(&certs.key, serving.key).expect("write tls.key");
        certs
    }
}

/// An operator that serves xDS (and only xDS) over TLS on all addresses, for the contracts labelled
/// with its id, as the chart's operator ServiceAccount.
#[derive(Debug)]
pub struct XdsOperator {
    process: Mutex<Tied>,
    /// Its admin port on 127.0.0.1.
    pub admin_port: u16,
    /// Its xDS port (on every address of the host).
    pub xds_port: u16,
    /// The contract selector's value.
    pub id: String,
    /// The CA proxies trust for it.
    pub ca: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl XdsOperator {
    /// Starts one: `id` selects its contracts, `extra` are more `operator run` arguments.
    pub fn start(name: &str, id: &str, extra: &[String]) -> Self {
        Self::start_with(name, id, extra, certs())
    }

    /// [`start`](Self::start) with these certificate files.
    pub fn start_with(name: &str, id: &str, extra: &[String], certs: &XdsCerts) -> Self {
        crate::ensure_crds();
        let xds_port = free_port();
        let mut args: Vec<String> = vec![
            "--publish".into(),
            "xds".into(),
            "--xds-listen".into(),
            format!("0.0.0.0:{xds_port}"),
            "--xds-tls-cert".into(),
            certs.cert.to_string_lossy().into_owned(),
            "--xds-tls-key".into(),
            certs.key.to_string_lossy().into_owned(),
            "--contract-selector".into(),
            format!("{CONTRACT_LABEL}={id}"),
        ];
        args.extend_from_slice(extra);
        let log = run_dir(name).join("operator.log");
        let (process, admin_port) = crate::testbed::spawn_operator(&args, &log);
        Self { process: Mutex::new(process), admin_port, xds_port, id: id.to_owned(), ca: certs.ca.clone(), args, log }
    }

    /// Stops it (SIGTERM) and starts it again with the same arguments and xDS port (a new admin port);
    /// returns how long it was down.
    pub fn restart(&mut self) -> Duration {
        let started = std::time::Instant::now();
        self.process.lock().unwrap_or_else(PoisonError::into_inner).stop();
        let (process, admin_port) = crate::testbed::spawn_operator(&self.args, &self.log);
        *self.process.lock().unwrap_or_else(PoisonError::into_inner) = process;
        self.admin_port = admin_port;
        started.elapsed()
    }

    /// Its `/metrics`.
    pub fn metrics(&self) -> String {
        curl(&[&format!("http://127.0.0.1:{}/metrics", self.admin_port)]).1
    }

    /// The value of a metric series (`name{labels}` exactly as exposed), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.process.lock().unwrap_or_else(PoisonError::into_inner).log_tail()
    }
}

/// The xDS operator of this test process, started on first use.
pub fn xds_operator() -> &'static XdsOperator {
    static F: OnceLock<XdsOperator> = OnceLock::new();
    F.get_or_init(|| XdsOperator::start("xds-operator", &unique("xds"), &[]))
}

/// A veth pair between the host and a network namespace: `host` on the host's end, `inside` on the
/// namespace's, a /30 of 10.(100+pid%100).(n).0.
#[derive(Debug)]
pub struct HostLink {
    /// The host end's address.
    pub host: String,
    /// The namespace end's address.
    pub inside: String,
    name: String,
}

impl HostLink {
    /// Joins `netns` to the host.
    pub fn new(netns: &NetworkNamespace) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("cx{}h{n}", pid % 100_000);
        let peer = format!("cx{}p{n}", pid % 100_000);
        let net = format!("10.{}.{}", 100 + pid % 100, n % 250);
        let (host, inside) = (format!("{net}.1"), format!("{net}.2"));
        let ip = |args: &[&str]| {
            let mut cmd = std::process::Command::new("ip");
            cmd.args(args);
            crate::run(cmd, None).ok();
        };
        ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &netns.name]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &name]);
        ip(&["link", "set", &name, "up"]);
        netns.run("ip", &["addr", "add", &format!("{inside}/30"), "dev", &peer]).ok();
        netns.run("ip", &["link", "set", &peer, "up"]).ok();
        Self { host, inside, name }
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["link", "delete", &self.name]);
        let _ = crate::run(cmd, None);
    }
}

/// How a proxy of a test is set up.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    /// Its `node.id` (and the Pod name, for a proxy whose region comes from its Pod's Node).
    pub name: String,
    /// `node.locality.region`; None: the operator finds it through the Pod `name` on that region's Node.
    pub region: Option<String>,
    /// The Node region of its Pod, when `region` is None.
    pub pod_region: Option<String>,
    /// Its Pod's namespace, when `region` is None (the operator may read Pods there).
    pub pod_namespace: Option<String>,
    /// Its `node.id` when not `name` (a Pod's name, unique in the Pod's namespace).
    pub node_id: Option<String>,
    /// Its listeners' address: `10.77.0.<host>`.
    pub host: u8,
    /// Envoy's admin port inside the namespace.
    pub admin_port: u16,
    /// More Envoy arguments (e.g. `--disable-extensions …`).
    pub envoy_args: Vec<String>,
    /// State of the world instead of delta.
    pub sotw: bool,
    /// Where it exports its spans (an OTLP gRPC receiver), and the share it traces (percent).
    pub otlp: Option<(SocketAddr, f64)>,
}

impl ProxySpec {
    /// A delta proxy with its region in its bootstrap.
    pub fn new(name: &str, region: &str, host: u8, admin_port: u16) -> Self {
        Self {
            name: name.to_owned(),
            region: Some(region.to_owned()),
            pod_region: None,
            pod_namespace: None,
            node_id: None,
            host,
            admin_port,
            envoy_args: Vec::new(),
            sotw: false,
            otlp: None,
        }
    }
}

/// A real Envoy fed over ADS by the operator.
#[derive(Debug)]
pub struct AdsEnvoy {
    /// The process.
    pub process: Tied,
    /// How it was set up.
    pub spec: ProxySpec,
    /// Its admin interface, inside the namespace.
    pub admin: SocketAddr,
    netns: String,
    bootstrap: PathBuf,
    log: PathBuf,
}

impl AdsEnvoy {
    /// The bootstrap of a proxy (`operator bootstrap`'s code), to the xDS server at `xds`.
    pub fn bootstrap(spec: &ProxySpec, namespace: &str, xds: &str, xds_port: u16, ca: &Path) -> String {
        let options = AdsBootstrap {
            node_id: spec.node_id.clone().unwrap_or_else(|| spec.name.clone()),
            fleet: "csp-e2e-gateway".to_owned(),
            region: spec.region.clone(),
            namespaces: vec![namespace.to_owned()],
            pod_namespace: Some(spec.pod_namespace.clone().unwrap_or_else(|| namespace.to_owned())),
            listen_address: Some(NetworkNamespace::address(spec.host).parse().expect("an IP address")),
            xds_host: xds.to_owned(),
            xds_port,
            tls: Some(AdsTls {
                ca_file: ca.to_string_lossy().into_owned(),
                server_name: Some(XDS_SERVER_NAME.to_owned()),
                client_cert: None,
            }),
            admin: SocketAddr::from(([127, 0, 0, 1], spec.admin_port)),
            delta: !spec.sotw,
            otlp: spec.otlp.map(|(address, sampling)| operator::envoy::bootstrap::Otlp {
                host: address.ip().to_string(),
                port: address.port(),
                sampling,
            }),
        };
        let mut bootstrap = ads(&options);
        if spec.envoy_args.iter().any(|a| a.contains("http_protocol_options")) {
            // An older or locked-down proxy without the upstream HTTP protocol options extension reaches
            // the xDS server over HTTP/2 the way older bootstraps did.
            if let Some(cluster) =
                bootstrap.static_resources.as_mut().and_then(|s| s.clusters.iter_mut().find(|c| c.name == XDS_CLUSTER))
            {
                cluster.typed_extension_protocol_options.clear();
                #[allow(deprecated)]
                {
                    cluster.http2_protocol_options = Some(Default::default());
                }
            }
        }
        to_yaml(&bootstrap).expect("the bootstrap writes as YAML")
    }

    /// Starts Envoy in `netns`, logging into `dir`.
    pub fn start(netns: &NetworkNamespace, dir: &Path, spec: ProxySpec, bootstrap: &str) -> Self {
        let file = dir.join(format!("{}.yaml", spec.name));
        std::fs::write(&file, bootstrap).expect("write the bootstrap");
        let log = dir.join(format!("{}.log", spec.name));
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            netns.name.clone(),
            tool("envoy").to_string_lossy().into_owned(),
            "--disable-hot-restart".into(),
            "--concurrency".into(),
            "1".into(),
            "-l".into(),
            "info".into(),
            "-c".into(),
            file.to_string_lossy().into_owned(),
        ];
        args.extend(spec.envoy_args.iter().cloned());
        let process = Tied::spawn(Path::new("ip"), &args, &[], &log);
        let admin = SocketAddr::from(([127, 0, 0, 1], spec.admin_port));
        Self { process, spec, admin, netns: netns.name.clone(), bootstrap: file, log }
    }

    /// Stops Envoy and starts it again with the same bootstrap (a new process, a new stream).
    pub fn restart(&mut self) {
        self.process.stop();
        let args: Vec<String> = [
            "netns",
            "exec",
            &self.netns,
            &tool("envoy").to_string_lossy(),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "info",
            "-c",
            &self.bootstrap.to_string_lossy(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(self.spec.envoy_args.iter().cloned())
        .collect();
        self.process = Tied::spawn(Path::new("ip"), &args, &[], &self.log);
    }

    /// GET an admin path; the body if it answered 200.
    pub fn admin_get(&self, path: &str) -> Option<String> {
        let url = format!("http://{}{path}", self.admin);
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "curl", "-sS", "--max-time", "5", "-f", &url]);
        let out = crate::run(cmd, None);
        out.success.then_some(out.stdout)
    }

    /// Envoy's uptime in seconds (`server.uptime`): it only grows while the process lives.
    pub fn uptime(&self) -> Option<u64> {
        let stats = self.admin_get("/stats?filter=^server.uptime$")?;
        stats.lines().find_map(|l| l.strip_prefix("server.uptime: ")?.trim().parse().ok())
    }

    /// The dynamic clusters Envoy runs, by name, with their version.
    pub fn cluster_versions(&self) -> Vec<(String, String)> {
        let Some(dump) = self.admin_get("/config_dump?resource=dynamic_active_clusters") else { return Vec::new() };
        let Ok(dump) = serde_json::from_str::<Value>(&dump) else { return Vec::new() };
        dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some((c["cluster"]["name"].as_str()?.to_owned(), c["version_info"].as_str().unwrap_or("").to_owned()))
            })
            .collect()
    }
}

/// A test's namespace, network namespace, Nodes, backends and proxies.
#[derive(Debug)]
pub struct XdsBed {
    /// The proxies, by name.
    pub proxies: Vec<AdsEnvoy>,
    backends: Vec<Backend>,
    /// The Kubernetes namespace.
    pub ns: TestNamespace,
    /// The network namespace.
    pub netns: NetworkNamespace,
    link: HostLink,
    /// Files.
    pub dir: PathBuf,
    node_prefix: String,
    next_host: u8,
    pods: Vec<(String, String)>,
}

impl XdsBed {
    /// A namespace, a network namespace joined to the host, and a Node per region.
    pub fn new(test: &str) -> Self {
        let ns = TestNamespace::new(test, &[]);
        let netns = NetworkNamespace::create();
        let link = HostLink::new(&netns);
        let dir = run_dir(test);
        let node_prefix = unique("csp-e2e-xnode");
        for region in REGIONS {
            let yaml = format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {node_prefix}-{region}\n  labels:\n    {}: {region}\n    {NODE_LABEL}: \"{}\"\n",
                crds::REGION_LABEL,
                std::process::id()
            );
            kubectl(&["create", "-f", "-"], Some(&yaml)).ok();
        }
        Self {
            proxies: Vec::new(),
            backends: Vec::new(),
            ns,
            netns,
            link,
            dir,
            node_prefix,
            next_host: 10,
            pods: Vec::new(),
        }
    }

    /// The host's address on the link to the network namespace (what the proxies reach the operator at).
    pub fn host_address(&self) -> &str {
        &self.link.host
    }

    /// The namespace's address on that link (what the host reaches a server of the namespace at).
    pub fn inside_address(&self) -> &str {
        &self.link.inside
    }

    /// The Node of a region.
    pub fn node(&self, region: &str) -> String {
        format!("{}-{region}", self.node_prefix)
    }

    /// Starts a backend.
    pub fn start_backend(&mut self, name: &str) -> &Backend {
        let address = NetworkNamespace::address(self.next_host);
        self.next_host += 1;
        self.backends.push(Backend::start(&product_bin("backend"), &self.netns, name, &address, &self.dir));
        &self.backends[self.backends.len() - 1]
    }

    /// A backend.
    pub fn backend(&self, name: &str) -> &Backend {
        self.backends.iter().find(|b| b.name == name).unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// A Service on `port` whose pods are the backends `(name, region)` (one EndpointSlice, each endpoint
    /// on its region's Node).
    pub fn service(&self, name: &str, port: u16, endpoints: &[(&str, &str)]) {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: {port}, targetPort: {target}}}]\n",
            ns = self.ns.name,
            target = backend::PORT
        );
        kubectl(&["apply", "-f", "-"], Some(&yaml)).ok();
        let mut slice = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports: [{{name: http, port: {}, protocol: TCP}}]\nendpoints:\n",
            self.ns.name,
            backend::PORT
        );
        for (backend, region) in endpoints {
            slice += &format!(
                "- addresses: [{}]\n  conditions: {{ready: true}}\n  nodeName: {}\n",
                self.backend(backend).address,
                self.node(region)
            );
        }
        kubectl(&["apply", "-f", "-"], Some(&slice)).ok();
    }

    /// Applies a contract for `operator`.
    pub fn contract(&self, operator: &XdsOperator, name: &str, spec: &str) {
        let yaml = format!(
            "apiVersion: csp.contracts.dev/v1alpha1\nkind: ChannelContract\nmetadata:\n  name: {name}\n  namespace: {}\n  labels: {{{CONTRACT_LABEL}: {}}}\nspec:\n{spec}",
            self.ns.name, operator.id,
        );
        kubectl(&["apply", "-f", "-"], Some(&yaml)).ok();
    }

    /// A contract as JSON.
    pub fn get_contract(&self, name: &str) -> Option<Value> {
        let r = kubectl(&["get", "channelcontract", name, "-n", &self.ns.name, "-o", "json"], None);
        r.success.then(|| serde_json::from_str(&r.stdout).ok()).flatten()
    }

    /// Waits until `check` holds for the contract's status; panics with the last status and `log`.
    pub fn wait_status(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        log: &dyn Fn() -> String,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(&format!("{name}: {what}"), timeout, || {
                let c = self.get_contract(name)?;
                last = c["status"].clone();
                let current = c["status"]["observedGeneration"] == c["metadata"]["generation"];
                (current && check(&c)).then_some(c)
            })
        }));
        found.unwrap_or_else(|_| panic!("timed out waiting for {name}: {what}; last status:\n{last:#}\n{}", log()))
    }

    /// Starts a proxy: a Pod object on its region's Node when its region comes from there, then Envoy.
    /// A proxy whose region comes from its Pod is, as a gateway's, in the chart's release namespace (where
    /// the operator may read Pods), under a name unique to the test.
    pub fn start_proxy(&mut self, operator: &XdsOperator, mut spec: ProxySpec) -> usize {
        if let Some(region) = spec.pod_region.clone() {
            let (pod, namespace) = (format!("{}-{}", spec.name, self.ns.name), crate::rbac::NAMESPACE.to_owned());
            let yaml = format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {namespace}}}\nspec:\n  nodeName: {}\n  automountServiceAccountToken: false\n  containers: [{{name: envoy, image: envoyproxy/envoy:v1.40.0}}]\n",
                self.node(&region)
            );
            kubectl(&["apply", "-f", "-"], Some(&yaml)).ok();
            self.pods.push((namespace.clone(), pod.clone()));
            spec.node_id = Some(pod);
            spec.pod_namespace = Some(namespace);
        }
        let bootstrap = AdsEnvoy::bootstrap(&spec, &self.ns.name, &self.link.host, operator.xds_port, &operator.ca);
        self.proxies.push(AdsEnvoy::start(&self.netns, &self.dir, spec, &bootstrap));
        self.proxies.len() - 1
    }

    /// The proxy named `name`.
    pub fn proxy(&mut self, name: &str) -> &mut AdsEnvoy {
        self.proxies.iter_mut().find(|p| p.spec.name == name).unwrap_or_else(|| panic!("no proxy {name}"))
    }

    /// `n` requests through proxy `proxy` for `service:port` (the authority the gateway routes by).
    pub fn get_many(&self, proxy: &str, service: &str, port: u16, n: usize, headers: &[(&str, &str)]) -> Vec<Reply> {
        let spec =
            &self.proxies.iter().find(|p| p.spec.name == proxy).unwrap_or_else(|| panic!("no proxy {proxy}")).spec;
        let url = format!("http://{}:{port}/", NetworkNamespace::address(spec.host));
        let authority = format!("{service}.{}:{port}", self.ns.name);
        let mut all = vec![("Host", authority.as_str())];
        all.extend_from_slice(headers);
        requests(&self.netns, &url, n, &all)
    }

    /// Waits until `n` requests in a row through `proxy` are all answered 200 by `backend`.
    pub fn settles_on(&self, proxy: &str, service: &str, port: u16, backend: &str, n: usize, timeout: Duration) {
        let mut last = Vec::new();
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(&format!("{proxy} to send {service} to {backend}"), timeout, || {
                last = self.get_many(proxy, service, port, n, &[]);
                last.iter().all(|r| r.status == 200 && r.backend == backend).then_some(())
            })
        }));
        if found.is_err() {
            let log =
                self.proxies.iter().find(|p| p.spec.name == proxy).map(|p| p.process.log_tail()).unwrap_or_default();
            panic!(
                "{proxy} never settled on {backend} for {service}; last replies: {last:?}\n--- {proxy} log ---\n{log}"
            );
        }
    }
}

impl Drop for XdsBed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.proxies {
                eprintln!("--- proxy {} ---\n{}", p.spec.name, p.process.log_tail());
            }
        }
        self.proxies.clear();
        self.backends.clear();
        for region in REGIONS {
            let _ = kubectl(&["delete", "node", &self.node(region), "--ignore-not-found", "--wait=false"], None);
        }
        for (namespace, pod) in &self.pods {
            let _ = kubectl(&["delete", "pod", pod, "-n", namespace, "--ignore-not-found", "--wait=false"], None);
        }
    }
}
