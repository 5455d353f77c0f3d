//! The way platform teams meet the project: `helm install` of the chart, with the operator and the webhook
//! running as local processes (the chart's documented values for running outside the cluster), then
//! `helm upgrade` and `helm uninstall`. The webhook runs with a token of the release's own webhook
//! ServiceAccount, so that it can do exactly what the chart's RBAC allows. It manages its own certificate
//! (the chart's default mode): it creates the CA and serving certificate in a Secret, injects the
//! caBundle, and rotates the serving certificate while admissions go on.

use std::path::PathBuf;
use std::time::Duration;

use e2e::webhook::{AdmissionStream, served_serial};
use e2e::{
    TestNamespace, Tied, free_port, helm, kubectl, product_bin, quietly, rbac, release_objects, repo_root, run_dir,
    unique, wait_until,
};

const RELEASE: &str = "csp";
const FULLNAME: &str = "csp-channel-contracts";

fn chart() -> String {
    repo_root().join("charts/channel-contracts").to_string_lossy().into_owned()
}

fn local_values() -> String {
    repo_root().join("charts/channel-contracts/ci/local-values.yaml").to_string_lossy().into_owned()
}

/// Uninstalls the release when dropped, so that a failed test leaves no webhook registration behind.
struct Release {
    namespace: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        quietly("helm", &["uninstall", RELEASE, "-n", &self.namespace, "--wait=false"]);
        quietly("kubectl", &["delete", "namespace", &self.namespace, "--wait=false", "--ignore-not-found"]);
    }
}

fn service(name: &str, regions: Option<&str>) -> String {
    let annotations = regions
        .map(|r| format!("  annotations: {{csp.contracts.dev/failover-regions: \"{r}\"}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n{annotations}spec:\n  ports: [{{port: 8080}}]\n  clusterIP: None\n"
    )
}

/// The webhook as the release's webhook ServiceAccount: a token of it, and the RBAC `helm install` created.
fn start_webhook(namespace: &str, port: u16, dir: &std::path::Path) -> Tied {
    let kubeconfig = rbac::kubeconfig_for(namespace, &format!("{FULLNAME}-webhook"));
    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--namespace",
        namespace,
        "--cert-secret",
        &format!("{FULLNAME}-webhook-tls"),
        "--webhook-config-name",
        FULLNAME,
        "--cert-dns-names",
        "127.0.0.1,localhost",
        // Short-lived serving certificates, so that the test sees them rotate.
        "--cert-validity",
        "30s",
        "--cert-renew-before",
        "20s",
        "--cert-check-interval",
        "1s",
        "--audit-interval",
        "5s",
        "--log-format",
        "text",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let env = [
        ("KUBECONFIG", kubeconfig.to_string_lossy().into_owned()),
        ("CSP_WEBHOOK_AUDIT_LEASE", format!("{FULLNAME}-webhook-audit")),
        ("POD_NAME", unique("webhook")),
        ("RUST_LOG", "info,kube=warn".to_owned()),
    ];
    Tied::spawn(&product_bin("webhook"), &args, &env, &dir.join("webhook.log"))
}

#[test]
fn helm_install_registers_a_working_webhook_upgrade_changes_nothing_and_uninstall_keeps_the_crds() {
    let namespace = unique("csp-helm");
    let release = Release { namespace: namespace.clone() };
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}/validate");
    let dir: PathBuf = run_dir("helm");

    let install = helm(&[
        "install",
        RELEASE,
        &chart(),
        "-n",
        &namespace,
        "--create-namespace",
        "-f",
        &local_values(),
        "--set",
        &format!("webhook.external.url={url}"),
    ])
    .ok();
    assert!(install.contains("STATUS: deployed"), "{install}");

    // The CRDs are there and established.
    for crd in ["channelcontracts.csp.contracts.dev", "contractpolicies.csp.contracts.dev"] {
        kubectl(&["wait", "--for=condition=Established", "--timeout=60s", &format!("crd/{crd}")], None).ok();
    }
    // The registration points at the local webhook, failurePolicy Fail, sideEffects None.
    let vwc = kubectl(&["get", "validatingwebhookconfiguration", FULLNAME, "-o", "json"], None).ok();
    let vwc: serde_json::Value = serde_json::from_str(&vwc).expect("json");
    let hook = &vwc["webhooks"][0];
    assert_eq!(hook["clientConfig"]["url"], url.as_str());
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["sideEffects"], "None");

    // The webhook creates its certificate Secret and injects the CA.
    let mut webhook = start_webhook(&namespace, port, &dir);
    wait_until("the webhook to inject its CA into the caBundle", Duration::from_secs(60), || {
        assert!(webhook.running(), "the webhook exited:\n{}", webhook.log_tail());
        let r = kubectl(
            &["get", "validatingwebhookconfiguration", FULLNAME, "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}"],
            None,
        );
        (r.success && !r.stdout.trim().is_empty()).then_some(())
    });
    kubectl(&["get", "secret", &format!("{FULLNAME}-webhook-tls"), "-n", &namespace], None).ok();

    // A policy, and a namespace it governs.
    let team = TestNamespace::new("helm-team", &["tier=production"]);
    let policy = unique("national-baseline");
    let policy_yaml = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {policy}}}\nspec:\n  match: {{namespaces: [{}]}}\n  failover: {{requiredRegions: [gz, sz, hz]}}\n",
        team.name
    );
    kubectl(&["apply", "-f", "-"], Some(&policy_yaml)).ok();
    let err = wait_until("the webhook to reject a non-compliant Service", Duration::from_secs(60), || {
        let r = kubectl(&["create", "-n", &team.name, "-f", "-"], Some(&service("payment-verify", Some("gz,sz"))));
        if r.success {
            // Admitted before the webhook knew the policy: remove it and try again.
            let _ = kubectl(&["delete", "service", "payment-verify", "-n", &team.name], None);
            None
        } else if r.stderr.contains("denied the request") {
            Some(r.stderr)
        } else {
            None
        }
    });
    let expected = format!(
        "ContractPolicy \"{policy}\" denied Service {}/payment-verify: missing failover regions [hz]; required [gz, sz, hz], declared [gz, sz]. Declare them with annotation csp.contracts.dev/failover-regions=\"gz,sz,hz\" or in a ChannelContract's spec.failover.regions.",
        team.name
    );
    assert!(err.contains(&expected), "expected:\n{expected}\ngot:\n{err}");

    // Certificate rotation while a stream of admissions continues: none fails.
    let stream = AdmissionStream::start(&team.name, |name| service(name, Some("gz,sz,hz")));
    let first = served_serial(port);
    let second = wait_until("the serving certificate to be renewed", Duration::from_secs(60), || {
        let now = served_serial(port);
        (!now.is_empty() && now != first).then_some(now)
    });
    wait_until("admissions after the renewal", Duration::from_secs(60), || (stream.admitted() >= 10).then_some(()));
    let failures = stream.stop();
    assert_ne!(first, second);
    assert!(failures.is_empty(), "admissions failed during rotation: {failures:?}");
    assert!(webhook.log_tail().contains("renewed the webhook's serving certificate"), "{}", webhook.log_tail());

    // helm upgrade with the same values changes nothing (and keeps the injected caBundle).
    let bundle = |_: ()| {
        kubectl(
            &["get", "validatingwebhookconfiguration", FULLNAME, "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}"],
            None,
        )
        .ok()
    };
    let before = release_objects(RELEASE, &namespace);
    let bundle_before = bundle(());
    helm(&[
        "upgrade",
        RELEASE,
        &chart(),
        "-n",
        &namespace,
        "-f",
        &local_values(),
        "--set",
        &format!("webhook.external.url={url}"),
    ])
    .ok();
    let after = release_objects(RELEASE, &namespace);
    assert_eq!(before, after, "helm upgrade with the same values should change no object");
    assert_eq!(bundle_before, bundle(()));

    // helm uninstall removes everything but the CRDs.
    webhook.stop();
    helm(&["uninstall", RELEASE, "-n", &namespace, "--wait"]).ok();
    for (kind_name, _) in &before {
        let (kind, name) = kind_name.split_once('/').unwrap_or_default();
        let r = kubectl(&["get", kind, name, "-n", &namespace], None);
        assert!(
            !r.success && r.stderr.contains("NotFound"),
            "{kind_name} should be gone after uninstall: {}",
            r.stdout
        );
    }
    kubectl(&["get", "crd", "channelcontracts.csp.contracts.dev", "contractpolicies.csp.contracts.dev"], None).ok();
    let _ = kubectl(&["delete", "contractpolicy", &policy, "--ignore-not-found"], None);
    drop(release);
}
