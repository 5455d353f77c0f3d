//! The binaries run in the tests as they run in a cluster: as the chart's own ServiceAccounts, with
//! exactly the chart's RBAC, never with the admin's kubeconfig. Once per test binary the chart's
//! ServiceAccounts, (Cluster)Roles and bindings are rendered with `helm template` (the local values: no
//! Deployments) as release [`RELEASE`] in [`NAMESPACE`] and applied; each binary then gets a kubeconfig
//! of its own whose token comes from the TokenRequest API (`kubectl create token`), with the API server
//! and CA of the admin kubeconfig.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::{kubectl, repo_root, run, run_dir, tool, wait_until};

/// The release the chart's RBAC is rendered as.
pub const RELEASE: &str = "csp-e2e";
/// The release namespace: where the chart's Roles are, hence the operator's and the webhook's Leases.
pub const NAMESPACE: &str = "csp-e2e-system";
/// The chart's `<fullname>` for [`RELEASE`].
pub const FULLNAME: &str = "csp-e2e-channel-contracts";

/// The operator's ServiceAccount (in [`NAMESPACE`]).
pub fn operator_service_account() -> String {
    format!("{FULLNAME}-operator")
}

/// The webhook's ServiceAccount (in [`NAMESPACE`]).
pub fn webhook_service_account() -> String {
    format!("{FULLNAME}-webhook")
}

/// The fleet hub's ServiceAccount (in [`NAMESPACE`]).
pub fn fleet_service_account() -> String {
    format!("{FULLNAME}-fleet")
}

/// The ServiceAccount a member cluster gives a fleet hub (in [`NAMESPACE`]).
pub fn fleet_member_service_account() -> String {
    format!("{FULLNAME}-fleet-member")
}

/// The only Lease the fleet hub may hold (in [`NAMESPACE`]).
pub fn fleet_lease() -> String {
    format!("{FULLNAME}-fleet")
}

/// The only Lease the operator may hold (in [`NAMESPACE`]).
pub fn operator_lease() -> String {
    format!("{FULLNAME}-operator")
}

/// The only Lease the webhook's audit may hold (in [`NAMESPACE`]).
pub fn webhook_audit_lease() -> String {
    format!("{FULLNAME}-webhook-audit")
}

/// The pinned Kubernetes release (`e2e/tools/versions.env`), which `helm template` needs: the helm built
/// here has no default Kubernetes version.
pub fn kubernetes_version() -> String {
    let path = repo_root().join("e2e/tools/versions.env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VERSION="))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("{} sets no KUBERNETES_VERSION", path.display()))
}

/// `helm template` of the chart's ServiceAccounts and RBAC, as `release` in `namespace`, with the values
/// of the local runs (`ci/local-values.yaml`), the fleet hub's and a fleet member's RBAC on (no hub
/// Deployment, no token Secret: tests issue tokens), and `extra` helm arguments.
pub fn render_rbac(release: &str, namespace: &str, extra: &[&str]) -> String {
    let chart = repo_root().join("charts/channel-contracts");
    let mut cmd = Command::new(tool("helm"));
    cmd.args(["template", release])
        .arg(&chart)
        .args(["--namespace", namespace, "--kube-version", &kubernetes_version(), "-f"])
        .arg(chart.join("ci/local-values.yaml"))
        .args([
            "--set",
            "fleet.hub.enabled=true,fleet.hub.deploy=false,fleet.member.enabled=true,fleet.member.tokenSecret=false",
        ])
        .args(extra);
    for template in
        ["serviceaccounts.yaml", "operator-rbac.yaml", "webhook-rbac.yaml", "fleet-rbac.yaml", "user-rbac.yaml"]
    {
        cmd.args(["--show-only", &format!("templates/{template}")]);
    }
    run(cmd, None).ok()
}

/// Applies the CRDs and the chart's ServiceAccounts and RBAC as [`RELEASE`] in [`NAMESPACE`], once per
/// test binary, and waits until the API server authorizes by them.
pub fn ensure_chart_rbac() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        crate::ensure_crds();
        let namespace = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n");
        kubectl(&["apply", "-f", "-"], Some(&namespace)).ok();
        kubectl(&["apply", "-f", "-"], Some(&render_rbac(RELEASE, NAMESPACE, &[]))).ok();
        // The RBAC authorizer reads bindings from a cache: wait until both a ClusterRole's and a Role's
        // rule take effect for both ServiceAccounts.
        for (sa, cluster_rule, lease) in [
            (operator_service_account(), ["watch", "endpointslices.discovery.k8s.io"], operator_lease()),
            (webhook_service_account(), ["watch", "contractpolicies.csp.contracts.dev"], webhook_audit_lease()),
        ] {
            let user = format!("system:serviceaccount:{NAMESPACE}:{sa}");
            let lease = format!("leases.coordination.k8s.io/{lease}");
            wait_until(&format!("the chart's RBAC to authorize {sa}"), Duration::from_secs(30), || {
                let cluster = kubectl(&["auth", "can-i", cluster_rule[0], cluster_rule[1], "-A", "--as", &user], None);
                let namespaced = kubectl(&["auth", "can-i", "update", &lease, "-n", NAMESPACE, "--as", &user], None);
                (cluster.stdout.trim() == "yes" && namespaced.stdout.trim() == "yes").then_some(())
            });
        }
    });
}

/// Writes a kubeconfig that authenticates as ServiceAccount `service_account` of `namespace` with a token
/// from the TokenRequest API (valid for 4 hours), for the admin kubeconfig's API server and CA.
pub fn kubeconfig_for(namespace: &str, service_account: &str) -> PathBuf {
    kubeconfig_for_at(&crate::kubeconfig(), namespace, service_account)
}

/// [`kubeconfig_for`] on the control plane of the admin kubeconfig `admin`.
pub fn kubeconfig_for_at(admin: &Path, namespace: &str, service_account: &str) -> PathBuf {
    let path = run_dir(&format!("sa-{service_account}")).join("kubeconfig");
    write_private(&path, &service_account_kubeconfig(admin, namespace, service_account));
    path
}

/// The text of a kubeconfig for ServiceAccount `service_account` of `namespace` on the control plane of
/// `admin`: its API server and CA, and a token from the TokenRequest API (valid for 4 hours).
pub fn service_account_kubeconfig(admin: &Path, namespace: &str, service_account: &str) -> String {
    let token =
        crate::kubectl_at(admin, &["create", "token", service_account, "-n", namespace, "--duration", "4h"], None).ok();
    let field = |path: &str| {
        crate::kubectl_at(admin, &["config", "view", "--raw", "--minify", "-o", &format!("jsonpath={path}")], None).ok()
    };
    let server = field("{.clusters[0].cluster.server}");
    let ca = field("{.clusters[0].cluster.certificate-authority-data}");
    assert!(!server.is_empty() && !ca.is_empty(), "the admin kubeconfig names no server or CA");
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {service_account}
  user:
    token: {token}
contexts:
- name: local
  context:
    cluster: local
    user: {service_account}
    namespace: {namespace}
current-context: local
"#,
        token = token.trim()
    )
}

/// Writes `text` to `path`, readable by its owner only.
pub fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The operator's kubeconfig (its ServiceAccount's token), once per test binary.
pub fn operator_kubeconfig() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        ensure_chart_rbac();
        kubeconfig_for(NAMESPACE, &operator_service_account())
    })
}

/// The webhook's kubeconfig (its ServiceAccount's token), once per test binary.
pub fn webhook_kubeconfig() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        ensure_chart_rbac();
        kubeconfig_for(NAMESPACE, &webhook_service_account())
    })
}
