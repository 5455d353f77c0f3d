//! The operator as service teams meet it, with real traffic: one operator process per test binary (a
//! [`OperatorFixture`], which reconciles only the contracts labelled with its id), and per test a
//! [`Testbed`]: a Kubernetes namespace with Services, EndpointSlices and Nodes (plain API objects: there
//! is no kubelet), backends and a real Envoy in a network namespace of the test's own, and the contract's
//! ConfigMap mirrored into the folder Envoy mounts, as the kubelet would.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backend::{self, Backend};
use crate::configmap_volume::ConfigMapVolume;
use crate::netns::{self, NetworkNamespace};
use crate::proxy::Envoy;
use crate::{TestNamespace, Tied, curl, kubectl, product_bin, run_dir, unique, wait_until};

/// The label that puts a contract under the fixture's operator (value: the fixture's id).
pub const CONTRACT_LABEL: &str = "csp-e2e-operator";
/// The label on the Nodes the tests create (value: the test process's pid).
pub const NODE_LABEL: &str = "csp-e2e-pid";
/// Envoy's admin port inside each test's network namespace.
pub const ENVOY_ADMIN_PORT: u16 = 19000;

/// A running operator.
#[derive(Debug)]
pub struct OperatorFixture {
    process: Mutex<Tied>,
    /// Its admin port on 127.0.0.1.
    pub admin_port: u16,
    /// The value of [`CONTRACT_LABEL`] it selects.
    pub id: String,
    /// Its `--proxy-config-dir`: where each Envoy gets its contract's ConfigMap mounted.
    pub proxy_config_dir: PathBuf,
}

/// The operator of this test process, started on first use.
pub fn operator() -> &'static OperatorFixture {
    static F: OnceLock<OperatorFixture> = OnceLock::new();
    F.get_or_init(OperatorFixture::start)
}

/// Deletes the Nodes that earlier, now gone, test processes created.
pub fn remove_stale_nodes() {
    let listed = kubectl(
        &[
            "get",
            "nodes",
            "-l",
            NODE_LABEL,
            "-o",
            &format!(
                "jsonpath={{range .items[*]}}{{.metadata.name}} {{.metadata.labels.{NODE_LABEL}}}{{\"\\n\"}}{{end}}"
            ),
        ],
        None,
    );
    for line in listed.stdout.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(pid)) = (words.next(), words.next()) else { continue };
        if pid.parse::<u32>().is_ok_and(|pid| !netns::alive(pid)) {
            let _ = kubectl(&["delete", "node", name, "--ignore-not-found", "--wait=false"], None);
        }
    }
}

/// Starts `target/debug/operator run` as the chart's operator ServiceAccount (its token, its RBAC: see
/// [`crate::rbac`]) with `--admin-listen` on a free port of every address (a Prometheus in a test's network
/// namespace scrapes it through the namespace's link to the host), `--log-format text` and `args`, logging
/// to `log`; waits until its `/readyz` answers 200. Returns it and its admin port.
pub fn spawn_operator(args: &[String], log: &std::path::Path) -> (Tied, u16) {
    let admin_port = crate::free_port();
    let mut all: Vec<String> = vec![
        "run".into(),
        "--admin-listen".into(),
        format!("0.0.0.0:{admin_port}"),
        "--log-format".into(),
        "text".into(),
    ];
    all.extend_from_slice(args);
    let env = [
        ("KUBECONFIG", crate::rbac::operator_kubeconfig().to_string_lossy().into_owned()),
        ("RUST_LOG", "info,operator=debug,kube=warn".to_owned()),
    ];
    let mut process = Tied::spawn(&product_bin("operator"), &all, &env, log);
    let url = format!("http://127.0.0.1:{admin_port}/readyz");
    wait_until("the operator to be ready", Duration::from_secs(60), || {
        assert!(process.running(), "the operator exited:\n{}", process.log_tail());
        (curl(&[&url]).0 == 200).then_some(())
    });
    (process, admin_port)
}

impl OperatorFixture {
    fn start() -> Self {
        crate::ensure_crds();
        netns::remove_stale();
        remove_stale_nodes();
        let dir = run_dir("operator");
        let proxy_config_dir = dir.join("proxy-config");
        std::fs::create_dir_all(&proxy_config_dir).expect("create the mount point");
        let id = unique("op");
        let args: Vec<String> = vec![
            "--proxy-config-dir".into(),
            proxy_config_dir.to_string_lossy().into_owned(),
            "--contract-selector".into(),
            format!("{CONTRACT_LABEL}={id}"),
        ];
        let (process, admin_port) = spawn_operator(&args, &dir.join("operator.log"));
        Self { process: Mutex::new(process), admin_port, id, proxy_config_dir }
    }

    /// Its `/metrics`.
    pub fn metrics(&self) -> String {
        curl(&[&format!("http://127.0.0.1:{}/metrics", self.admin_port)]).1
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.process.lock().unwrap_or_else(PoisonError::into_inner).log_tail()
    }

    /// Panics with its log unless it runs.
    pub fn assert_running(&self) {
        let mut process = self.process.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(process.running(), "the operator exited:\n{}", process.log_tail());
    }
}

/// One answer seen by the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The HTTP status (0: no answer).
    pub status: u16,
    /// Seconds from the request to the end of the answer.
    pub seconds: f64,
    /// Its `x-backend` header (which backend answered), empty if none.
    pub backend: String,
    /// Its `x-csp-contract` header.
    pub contract: String,
    /// The `x-channel-priority` request header(s) the backend received (`x-seen-channel-priority`), comma
    /// separated, empty if none.
    pub channel_priority: String,
}

/// Where an endpoint's region comes from.
#[derive(Debug, Clone, Copy)]
pub enum Placement<'a> {
    /// On the testbed's Node of this region (`nodeName`).
    Node(&'a str),
    /// No Node (the EndpointSlice's own region label applies, if any).
    Imported,
}

/// A test's own namespace, network namespace, Nodes, backends and Envoy. Dropping it stops the
/// processes and deletes what it created.
#[derive(Debug)]
pub struct Testbed {
    /// The Envoy, once started.
    pub envoy: Option<Envoy>,
    backends: Vec<Backend>,
    volume: Option<ConfigMapVolume>,
    /// The Kubernetes namespace.
    pub ns: TestNamespace,
    /// The network namespace.
    pub netns: NetworkNamespace,
    /// The test's folder.
    pub dir: PathBuf,
    nodes: Vec<String>,
    node_prefix: String,
    listen_port: u16,
    next_host: u8,
}

/// The regions the testbed has Nodes for.
pub const REGIONS: [&str; 3] = ["gz", "sz", "hz"];

impl Testbed {
    /// A testbed for `test`, with Nodes in [`REGIONS`] (label `topology.kubernetes.io/region`).
    pub fn new(test: &str) -> Self {
        let fixture = operator();
        fixture.assert_running();
        let ns = TestNamespace::new(test, &[]);
        let netns = NetworkNamespace::create();
        let dir = run_dir(test);
        let node_prefix = unique("csp-e2e-node");
        let mut nodes = Vec::new();
        for region in REGIONS {
            let name = format!("{node_prefix}-{region}");
            let yaml = format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    {}: {region}\n    {NODE_LABEL}: \"{}\"\n",
                crds::REGION_LABEL,
                std::process::id()
            );
            kubectl(&["create", "-f", "-"], Some(&yaml)).ok();
            nodes.push(name);
        }
        Self {
            envoy: None,
            backends: Vec::new(),
            volume: None,
            ns,
            netns,
            dir,
            nodes,
            node_prefix,
            listen_port: 0,
            next_host: 10,
        }
    }

    /// The name of the testbed's Node in `region`.
    pub fn node(&self, region: &str) -> String {
        format!("{}-{region}", self.node_prefix)
    }

    /// Starts a backend named `name` on the next free 10.77.0.x.
    pub fn start_backend(&mut self, name: &str) -> &Backend {
        // Cargo builds this crate's binaries next to the product binaries for its tests.
        let binary = product_bin("backend");
        let address = NetworkNamespace::address(self.next_host);
        self.next_host += 1;
        let backend = Backend::start(&binary, &self.netns, name, &address, &self.dir);
        self.backends.push(backend);
        &self.backends[self.backends.len() - 1]
    }

    /// The backend named `name`.
    pub fn backend(&self, name: &str) -> &Backend {
        self.backends.iter().find(|b| b.name == name).unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// Creates a selector-less Service whose port `port` (named `http`) maps to the backends' port.
    pub fn service(&self, name: &str, port: u16) {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: {port}, targetPort: {target}}}]\n",
            ns = self.ns.name,
            target = backend::PORT
        );
        kubectl(&["apply", "-f", "-"], Some(&yaml)).ok();
    }

    /// Applies an EndpointSlice `slice` of Service `service` with the named backends, each placed on a
    /// Node or imported; `region` labels the slice itself.
    pub fn endpoint_slice(
        &self,
        slice: &str,
        service: &str,
        region: Option<&str>,
        endpoints: &[(&str, Placement<'_>)],
    ) {
        let mut yaml = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  namespace: {}\n  labels:\n    kubernetes.io/service-name: {service}\n",
            self.ns.name
        );
        if let Some(region) = region {
            yaml += &format!("    {}: {region}\n", crds::REGION_LABEL);
        }
        yaml += &format!(
            "addressType: IPv4\nports: [{{name: http, port: {}, protocol: TCP}}]\nendpoints:\n",
            backend::PORT
        );
        for (name, placement) in endpoints {
            yaml += &format!("- addresses: [{}]\n  conditions: {{ready: true}}\n", self.backend(name).address);
            if let Placement::Node(region) = placement {
                yaml += &format!("  nodeName: {}\n", self.node(region));
            }
        }
        kubectl(&["apply", "-f", "-"], Some(&yaml)).ok();
    }

    /// Applies a ChannelContract `name` with this spec (YAML, indented by two spaces), under the fixture's
    /// operator.
    pub fn contract(&self, name: &str, spec: &str) {
        self.contract_for(&operator().id, name, spec);
    }

    /// Applies a ChannelContract `name` with this spec, under the operators that select [`CONTRACT_LABEL`]
    /// `operator_id`.
    pub fn contract_for(&self, operator_id: &str, name: &str, spec: &str) {
        let yaml = format!(
            "apiVersion: csp.contracts.dev/v1alpha1\nkind: ChannelContract\nmetadata:\n  name: {name}\n  namespace: {}\n  labels: {{{CONTRACT_LABEL}: {operator_id}}}\nspec:\n{spec}",
            self.ns.name,
        );
        kubectl(&["apply", "-f", "-"], Some(&yaml)).ok();
    }

    /// `kubectl get <kind> <name> -o json` in the testbed's namespace; None if it does not exist.
    pub fn get_json(&self, kind: &str, name: &str) -> Option<Value> {
        let r = kubectl(&["get", kind, name, "-n", &self.ns.name, "-o", "json"], None);
        if !r.success {
            assert!(r.stderr.contains("NotFound"), "kubectl get {kind} {name}: {}", r.stderr);
            return None;
        }
        serde_json::from_str(&r.stdout).ok()
    }

    /// The contract's condition of `type_`, if it has one.
    pub fn condition(&self, contract: &str, type_: &str) -> Option<Value> {
        let c = self.get_json("channelcontract", contract)?;
        c["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).cloned()
    }

    /// Waits until the contract's condition `type_` has this status and reason, and describes the
    /// contract's current generation; returns the whole contract.
    pub fn wait_condition(&self, contract: &str, type_: &str, status: &str, reason: &str) -> Value {
        let mut last = Value::Null;
        let what = format!("{contract}: {type_}={status} ({reason})");
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(&what, Duration::from_secs(30), || {
                let c = self.get_json("channelcontract", contract)?;
                last = c["status"].clone();
                let generation = c["metadata"]["generation"].clone();
                let cond = c["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?.clone();
                (cond["status"] == status && cond["reason"] == reason && cond["observedGeneration"] == generation)
                    .then_some(c)
            })
        }));
        match found {
            Ok(c) => c,
            Err(_) => {
                panic!("timed out waiting for {what}; last status:\n{last:#}\noperator log:\n{}", operator().log_tail())
            }
        }
    }

    /// Waits until the contract is Programmed for its current generation; returns its configVersion.
    pub fn wait_programmed(&self, contract: &str) -> String {
        let c = self.wait_condition(contract, "Programmed", "True", "Programmed");
        c["status"]["configVersion"].as_str().map(str::to_owned).expect("a programmed contract has a configVersion")
    }

    /// Waits until the contract is Programmed for its current generation with these endpoints per
    /// channel (`status.channelSummary`, e.g. `primary:2,cache:1`); returns the whole contract.
    pub fn wait_channels(&self, contract: &str, summary: &str) -> Value {
        let mut last = Value::Null;
        let what = format!("{contract}: programmed with channels {summary}");
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(&what, Duration::from_secs(30), || {
                let c = self.get_json("channelcontract", contract)?;
                last = c["status"].clone();
                let cond = c["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Programmed")?.clone();
                (cond["status"] == "True"
                    && cond["observedGeneration"] == c["metadata"]["generation"]
                    && c["status"]["channelSummary"] == summary)
                    .then_some(c)
            })
        }));
        match found {
            Ok(c) => c,
            Err(_) => {
                panic!("timed out waiting for {what}; last status:\n{last:#}\noperator log:\n{}", operator().log_tail())
            }
        }
    }

    /// Mirrors the contract's ConfigMap into a volume (as the kubelet does) and starts Envoy on it, with
    /// the listener on `port` (the contract's `spec.port`); waits until the listener answers.
    pub fn start_envoy(&mut self, contract: &str, port: u16) {
        self.wait_programmed(contract);
        let volume = ConfigMapVolume::follow(&self.ns.name, &format!("{contract}-envoy"), &self.dir.join("volume"));
        // Like a pod, Envoy starts once its volume has content (whichever version is current by then).
        wait_until("the ConfigMap in the volume", Duration::from_secs(30), || {
            (!volume.written().is_empty()).then_some(())
        });
        let envoy = Envoy::start(&self.netns, &volume.dir, &operator().proxy_config_dir, ENVOY_ADMIN_PORT, &self.dir);
        self.volume = Some(volume);
        self.envoy = Some(envoy);
        self.listen_port = port;
        wait_until("Envoy's listener to answer", Duration::from_secs(30), || {
            self.envoy_mut().assert_running();
            (self.get(&[]).status != 0).then_some(())
        });
    }

    /// The Envoy.
    pub fn envoy_mut(&mut self) -> &mut Envoy {
        self.envoy.as_mut().expect("Envoy was started")
    }

    /// The Envoy.
    pub fn envoy(&self) -> &Envoy {
        self.envoy.as_ref().expect("Envoy was started")
    }

    /// The ConfigMap versions written into Envoy's volume so far.
    pub fn volume(&self) -> &ConfigMapVolume {
        self.volume.as_ref().expect("Envoy was started")
    }

    /// `n` requests, one after the other, through Envoy's listener (inside the network namespace).
    pub fn get_many(&self, n: usize, headers: &[(&str, &str)]) -> Vec<Reply> {
        let url = format!("http://{}:{}/", NetworkNamespace::address(1), self.listen_port);
        requests(&self.netns, &url, n, headers)
    }

    /// One request through Envoy's listener.
    pub fn get(&self, headers: &[(&str, &str)]) -> Reply {
        self.get_many(1, headers).remove(0)
    }

    /// Sends requests until `backend` answers one with 200; returns when that was.
    pub fn wait_served_by(&mut self, backend: &str, headers: &[(&str, &str)], timeout: Duration) -> Instant {
        let mut seen = Vec::new();
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(&format!("{backend} to serve"), timeout, || {
                self.envoy_mut().assert_running();
                let r = self.get(headers);
                let done = r.status == 200 && r.backend == backend;
                seen.push(r);
                done.then(Instant::now)
            })
        }));
        found.unwrap_or_else(|_| {
            panic!("{backend} never served; last replies: {:?}", &seen[seen.len().saturating_sub(10)..])
        })
    }

    /// Waits until `backend` serves, then checks that it answers the next `n` requests too (200).
    pub fn settles_on(&mut self, backend: &str, headers: &[(&str, &str)], n: usize, timeout: Duration) {
        let start = Instant::now();
        loop {
            self.wait_served_by(backend, headers, timeout.saturating_sub(start.elapsed()));
            let replies = self.get_many(n, headers);
            if replies.iter().all(|r| r.status == 200 && r.backend == backend) {
                return;
            }
            assert!(start.elapsed() < timeout, "traffic did not settle on {backend}: {replies:?}");
        }
    }
}

/// `n` GETs of `url`, one after the other, from inside `netns` (one curl), with `headers`: each reply's
/// status, time, `x-backend` and `x-csp-contract` (a request that got no answer is status 0).
pub fn requests(netns: &NetworkNamespace, url: &str, n: usize, headers: &[(&str, &str)]) -> Vec<Reply> {
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "10".into(),
        "-w".into(),
        "%{http_code} %{time_total} [%header{x-backend}] [%header{x-csp-contract}] [%header{x-seen-channel-priority}]\\n".into(),
    ];
    for (k, v) in headers {
        args.push("-H".into());
        args.push(format!("{k}: {v}"));
    }
    for _ in 0..n {
        args.extend([url.to_owned(), "-o".into(), "/dev/null".into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = netns.run("curl", &args);
    let mut replies: Vec<Reply> = out.stdout.lines().filter_map(parse_reply).collect();
    replies.resize(
        n,
        Reply {
            status: 0,
            seconds: 0.0,
            backend: String::new(),
            contract: String::new(),
            channel_priority: String::new(),
        },
    );
    replies
}

fn parse_reply(line: &str) -> Option<Reply> {
    let mut parts = line.splitn(3, ' ');
    let status = parts.next()?.parse().ok()?;
    let seconds = parts.next()?.parse().ok()?;
    let rest = parts.next().unwrap_or_default();
    let mut headers = rest.split("] [").map(|s| s.trim_matches(|c| c == '[' || c == ']').to_owned());
    Some(Reply {
        status,
        seconds,
        backend: headers.next().unwrap_or_default(),
        contract: headers.next().unwrap_or_default(),
        channel_priority: headers.next().unwrap_or_default(),
    })
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(envoy) = &self.envoy {
                eprintln!("--- Envoy log ({}) ---\n{}", self.dir.display(), envoy.process.log_tail());
            }
            for b in &self.backends {
                eprintln!("--- backend {} ({} requests) ---\n{}", b.name, b.requests(), b.log_tail());
            }
            eprintln!("--- operator log ---\n{}", operator().log_tail());
        }
        // The processes go first: deleting the Nodes republishes the ConfigMap, which nothing should follow.
        drop(self.envoy.take());
        self.backends.clear();
        drop(self.volume.take());
        for node in &self.nodes {
            let _ = kubectl(&["delete", "node", node, "--ignore-not-found", "--wait=false"], None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        let r = parse_reply("504 0.401234 [] [ns/pv]").expect("parses");
        assert_eq!((r.status, r.backend.as_str(), r.contract.as_str()), (504, "", "ns/pv"));
        assert!((r.seconds - 0.401234).abs() < 1e-9);
        let r = parse_reply("200 0.01 [gz-1] [ns/pv]").expect("parses");
        assert_eq!(r.backend, "gz-1");
        assert_eq!(parse_reply("000 0.0 [] []").map(|r| r.status), Some(0));
    }
}
