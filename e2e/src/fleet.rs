//! A fleet for the tests: control planes of their own (each a real etcd, kube-apiserver and
//! kube-controller-manager started by `e2e/cluster.sh` in a folder of its own, no node), each with the CRDs
//! and the chart's RBAC; a member's webhook; the hub process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Run, Tied, kubectl_at, product_bin, rbac, repo_root, run, run_dir, unique, wait_until};

/// A control plane of its own, stopped when dropped.
#[derive(Debug)]
pub struct ControlPlane {
    /// Its name in the test.
    pub name: String,
    /// Its state folder (`CSP_RUN_DIR`).
    pub dir: PathBuf,
    up: bool,
    lean: bool,
}

impl ControlPlane {
    /// Starts control planes in parallel (each takes ~15 s, mostly the API server's start).
    pub fn start_many(names: &[&str]) -> Vec<ControlPlane> {
        let handles: Vec<_> = names
            .iter()
            .map(|name| {
                let name = (*name).to_owned();
                std::thread::spawn(move || ControlPlane::start(&name))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a control plane's start panicked")).collect()
    }

    /// Starts one control plane.
    pub fn start(name: &str) -> Self {
        Self::start_in(name, run_dir(&format!("cp-{name}")), false)
    }

    /// Starts one in `dir`; `lean`: without kube-controller-manager (for many members in a benchmark).
    pub fn start_in(name: &str, dir: PathBuf, lean: bool) -> Self {
        let cp = Self { name: name.to_owned(), dir, up: true, lean };
        cp.cluster_sh("up").ok();
        cp
    }

    fn cluster_sh(&self, verb: &str) -> Run {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("e2e/cluster.sh"))
            .arg(verb)
            .env("CSP_RUN_DIR", &self.dir)
            .env("CSP_NODE", "0")
            .env("CSP_CONTROLLER_MANAGER", if self.lean { "0" } else { "1" })
            .env("CSP_E2E_BIN", crate::bin_dir());
        run(cmd, None)
    }

    /// Its admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// kubectl as its admin.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Run {
        kubectl_at(&self.kubeconfig(), args, stdin)
    }

    /// Its API server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        std::fs::read_to_string(self.dir.join("apiserver-port"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{} has no apiserver-port", self.dir.display()))
    }

    /// The resident memory (VmRSS, bytes) of its processes (etcd, API server, controller manager).
    pub fn rss(&self) -> u64 {
        ["etcd", "kube-apiserver", "kube-controller-manager"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(self.dir.join("pids").join(p)).ok())
            .filter_map(|pid| crate::fleet::rss_of(pid.trim().parse().ok()?))
            .sum()
    }

    /// Stops it (etcd, API server, controller manager).
    pub fn stop(&mut self) {
        if self.up {
            self.up = false;
            let _ = self.cluster_sh("down");
        }
    }

    /// The CRDs, the release namespace and the chart's RBAC (as [`rbac::RELEASE`] in [`rbac::NAMESPACE`],
    /// with `extra` helm arguments), once the API server authorizes by them.
    pub fn install(&self, extra: &[&str]) {
        crate::apply_crds(&self.kubeconfig());
        let namespace = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n", rbac::NAMESPACE);
        self.kubectl(&["apply", "-f", "-"], Some(&namespace)).ok();
        self.kubectl(&["apply", "-f", "-"], Some(&rbac::render_rbac(rbac::RELEASE, rbac::NAMESPACE, extra))).ok();
        for (sa, verb, resource) in [
            (rbac::webhook_service_account(), "watch", "contractpolicies.csp.contracts.dev"),
            (rbac::fleet_service_account(), "watch", "contractpolicies.csp.contracts.dev"),
            (rbac::fleet_member_service_account(), "delete", "contractpolicies.csp.contracts.dev"),
        ] {
            let user = format!("system:serviceaccount:{}:{sa}", rbac::NAMESPACE);
            wait_until(
                &format!("the chart's RBAC to authorize {sa} on {}", self.name),
                Duration::from_secs(30),
                || {
                    (self.kubectl(&["auth", "can-i", verb, resource, "-A", "--as", &user], None).stdout.trim() == "yes")
                        .then_some(())
                },
            );
        }
    }

    /// A kubeconfig file for one of the chart's ServiceAccounts here.
    pub fn service_account(&self, service_account: &str) -> PathBuf {
        rbac::kubeconfig_for_at(&self.kubeconfig(), rbac::NAMESPACE, service_account)
    }

    /// A namespace here with labels (`k=v`).
    pub fn namespace(&self, name: &str, labels: &[&str]) {
        let mut yaml =
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    csp-e2e: \"true\"\n");
        for label in labels {
            let (k, v) = label.split_once('=').unwrap_or((label, ""));
            yaml.push_str(&format!("    {k}: \"{v}\"\n"));
        }
        self.kubectl(&["apply", "-f", "-"], Some(&yaml)).ok();
    }

    /// An object's field (`jsonpath`), or None when the object is missing.
    pub fn get(&self, what: &[&str], jsonpath: &str) -> Option<String> {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        let path = format!("jsonpath={jsonpath}");
        args.extend_from_slice(&["-o", &path]);
        let r = self.kubectl(&args, None);
        r.success.then(|| r.stdout.trim().to_owned())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The hub process (`operator fleet`), as the chart's fleet ServiceAccount of the hub control plane.
#[derive(Debug)]
pub struct Hub {
    /// The process.
    pub process: Tied,
    /// Its admin port (metrics) on 127.0.0.1.
    pub admin_port: u16,
}

impl Hub {
    /// Starts it against `hub` with `args` (beyond the admin address, namespace and leader election).
    pub fn start(hub: &ControlPlane, args: &[&str]) -> Self {
        let kubeconfig = hub.service_account(&rbac::fleet_service_account());
        let admin_port = crate::free_port();
        let mut all: Vec<String> = vec![
            "fleet".into(),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin_port}"),
            "--namespace".into(),
            rbac::NAMESPACE.into(),
            "--leader-elect".into(),
            "--leader-election-namespace".into(),
            rbac::NAMESPACE.into(),
            "--leader-election-lease".into(),
            rbac::fleet_lease(),
            "--log-format".into(),
            "text".into(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let env = [
            ("KUBECONFIG", kubeconfig.to_string_lossy().into_owned()),
            ("POD_NAME", unique("fleet")),
            ("RUST_LOG", "info,operator=debug,kube=warn".to_owned()),
        ];
        let dir = run_dir("fleet-hub");
        let mut process = Tied::spawn(&product_bin("operator"), &all, &env, &dir.join("fleet.log"));
        let url = format!("http://127.0.0.1:{admin_port}/readyz");
        wait_until("the hub to be ready", Duration::from_secs(60), || {
            assert!(process.running(), "the hub exited:\n{}", process.log_tail());
            (crate::curl(&[&url]).0 == 200).then_some(())
        });
        Self { process, admin_port }
    }

    /// Its metrics.
    pub fn metrics(&self) -> String {
        crate::curl(&[&format!("http://127.0.0.1:{}/metrics", self.admin_port)]).1
    }

    /// Its whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.process.log).unwrap_or_default()
    }
}

/// A process's resident memory (VmRSS), in bytes.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Where a member's kubeconfig for the hub goes: a Secret of ours on the hub.
pub fn member_secret(name: &str, kubeconfig: &str) -> String {
    let indented: String = kubeconfig.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: member-{name}\n  namespace: {}\n  labels:\n    {}: {name}\nstringData:\n  kubeconfig: |\n{indented}",
        rbac::NAMESPACE,
        crds::MEMBER_CLUSTER_LABEL
    )
}

/// An Argo CD cluster Secret for a member, as Argo CD writes one (`argocd cluster add`): name, server,
/// and a config with a bearer token and the CA.
pub fn argocd_cluster_secret(namespace: &str, name: &str, server: &str, token: &str, ca_base64: &str) -> String {
    let config = serde_json::json!({"bearerToken": token, "tlsClientConfig": {"insecure": false, "caData": ca_base64}});
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: cluster-{name}\n  namespace: {namespace}\n  labels:\n    argocd.argoproj.io/secret-type: cluster\nstringData:\n  name: {name}\n  server: {server}\n  config: '{config}'\n"
    )
}

/// The `token:` of a kubeconfig's text.
pub fn token_of(kubeconfig: &str) -> String {
    field_of(kubeconfig, "token: ")
}

/// The `certificate-authority-data:` of a kubeconfig's text.
pub fn ca_of(kubeconfig: &str) -> String {
    field_of(kubeconfig, "certificate-authority-data: ")
}

fn field_of(kubeconfig: &str, prefix: &str) -> String {
    kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no {prefix:?} in the kubeconfig"))
}

/// Reads a kubeconfig file.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
