//! A real webhook process for the tests: a CA and serving certificate, the binary listening on a free
//! loopback port as the chart's webhook ServiceAccount (see [`crate::rbac`]), and a ValidatingWebhookConfiguration (`clientConfig.url` + `caBundle`, failurePolicy
//! Fail, sideEffects None) that selects only the namespaces this fixture labels.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{TestNamespace, Tied, curl, kubectl, kubectl_at, product_bin, rbac, run_dir, unique, wait_until};

/// The label that puts a namespace under a fixture's webhook.
pub const NAMESPACE_LABEL: &str = "csp-e2e-webhook";

/// A running webhook registered with the API server.
#[derive(Debug)]
pub struct WebhookFixture {
    /// The process.
    pub process: Tied,
    /// Its HTTPS port on 127.0.0.1.
    pub port: u16,
    /// The CA certificate (PEM) that signed its serving certificate.
    pub ca_file: PathBuf,
    /// The serving certificate and key files.
    pub cert_file: PathBuf,
    /// The serving key file.
    pub key_file: PathBuf,
    /// The ValidatingWebhookConfiguration's name, and the namespace label value it selects.
    pub id: String,
    /// The admin kubeconfig of the control plane it is registered with.
    pub admin: PathBuf,
}

impl WebhookFixture {
    /// Starts the webhook and registers it; waits until it is ready.
    pub fn start(name: &str) -> Self {
        Self::start_with(name, &[])
    }

    /// [`start`](Self::start) with more command-line arguments for the webhook.
    pub fn start_with(name: &str, extra_args: &[String]) -> Self {
        crate::ensure_crds();
        Self::start_on(&crate::kubeconfig(), rbac::webhook_kubeconfig(), name, extra_args)
    }

    /// Starts a webhook for the control plane of `admin` (its CRDs and the chart's RBAC in place), running
    /// with `service_account` (a kubeconfig of the chart's webhook ServiceAccount there), and registers it.
    pub fn start_on(admin: &Path, service_account: &Path, name: &str, extra_args: &[String]) -> Self {
        Self::start_registered_as(admin, service_account, name, extra_args, &unique("csp-e2e"))
    }

    /// [`start_on`](Self::start_on) with the ValidatingWebhookConfiguration named `id` (e.g. the chart's
    /// own name, which the chart's RBAC lets the webhook update).
    pub fn start_registered_as(
        admin: &Path,
        service_account: &Path,
        name: &str,
        extra_args: &[String],
        id: &str,
    ) -> Self {
        // Earlier runs' registrations select namespaces that no longer exist; remove them anyway.
        let _ = kubectl_at(
            admin,
            &["delete", "validatingwebhookconfiguration", "-l", "csp-e2e=true", "--ignore-not-found"],
            None,
        );
        let dir = run_dir(name);
        let (ca, serving) = webhook::certs::ca_and_serving(
            "csp-e2e-webhook",
            &["127.0.0.1".into(), "localhost".into()],
            std::time::Duration::from_secs(86_400),
            std::time::Duration::from_secs(86_400),
        )
        .expect("certificates");
        let ca_file = dir.join("ca.crt");
        let cert_file = dir.join("tls.crt");
        let key_file = dir.join("tls.key");
        std::fs::write(&ca_file, &ca.cert).expect("write ca");
        std::fs::write(&cert_file, &serving.cert).expect("write cert");
        std::fs::write(&key_file, &serving.key).expect("write key");
        // The CA key stays with the test, for certificate rotation tests.
        std::fs::write(dir.join("ca.key"), &ca.key).expect("write ca key");
        let port = crate::free_port();
        let args = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--tls-cert-file".into(),
            cert_file.to_string_lossy().into_owned(),
            "--tls-key-file".into(),
            key_file.to_string_lossy().into_owned(),
            "--tls-reload-interval".into(),
            "500ms".into(),
            "--namespace".into(),
            rbac::NAMESPACE.into(),
            "--audit-interval".into(),
            "3s".into(),
            "--log-format".into(),
            "text".into(),
        ];
        let mut args: Vec<String> = args.into_iter().chain(extra_args.iter().cloned()).collect();
        // An --audit-interval of the caller's replaces the fixture's 3s.
        if extra_args.iter().any(|a| a == "--audit-interval") {
            let at = args.iter().position(|a| a == "--audit-interval").expect("the fixture's own");
            args.drain(at..at + 2);
        }
        // As the chart's webhook ServiceAccount, with the chart's RBAC and audit Lease.
        let env = [
            ("KUBECONFIG", service_account.to_string_lossy().into_owned()),
            ("CSP_WEBHOOK_AUDIT_LEASE", rbac::webhook_audit_lease()),
            ("POD_NAME", unique("webhook")),
            ("RUST_LOG", "info,webhook=debug,kube=warn".to_owned()),
        ];
        let mut process = Tied::spawn(&product_bin("webhook"), &args, &env, &dir.join("webhook.log"));
        let ca_arg = ca_file.to_string_lossy().into_owned();
        let url = format!("https://127.0.0.1:{port}/readyz");
        wait_until("the webhook to be ready", Duration::from_secs(60), || {
            assert!(process.running(), "the webhook exited:\n{}", process.log_tail());
            (curl(&["--cacert", &ca_arg, &url]).0 == 200).then_some(())
        });
        let fixture =
            Self { process, port, ca_file, cert_file, key_file, id: id.to_owned(), admin: admin.to_path_buf() };
        fixture.register(&ca.cert);
        fixture
    }

    fn register(&self, ca_pem: &str) {
        use base64::Engine;
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
        let yaml = format!(
            r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: {id}
  labels: {{csp-e2e: "true"}}
webhooks:
- name: validate.csp.contracts.dev
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  matchPolicy: Equivalent
  timeoutSeconds: 5
  clientConfig:
    url: https://127.0.0.1:{port}/validate
    caBundle: {ca_bundle}
  namespaceSelector:
    matchExpressions:
    - {{key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system]}}
    - {{key: {label}, operator: In, values: ["{id}"]}}
  rules:
  - apiGroups: [""]
    apiVersions: [v1]
    operations: [CREATE, UPDATE, DELETE]
    resources: [services]
    scope: Namespaced
  - apiGroups: [csp.contracts.dev]
    apiVersions: [v1alpha1]
    operations: [CREATE, UPDATE, DELETE]
    resources: [channelcontracts]
    scope: Namespaced
"#,
            id = self.id,
            port = self.port,
            label = NAMESPACE_LABEL,
        );
        kubectl_at(&self.admin, &["apply", "-f", "-"], Some(&yaml)).ok();
    }

    /// A namespace under this webhook, with more labels (`k=v`).
    pub fn namespace(&self, test: &str, labels: &[&str]) -> TestNamespace {
        let label = format!("{NAMESPACE_LABEL}={}", self.id);
        let mut all = vec![label.as_str()];
        all.extend_from_slice(labels);
        TestNamespace::new(test, &all)
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Removes the registration.
    pub fn unregister(&self) {
        let _ = kubectl_at(
            &self.admin,
            &["delete", "validatingwebhookconfiguration", &self.id, "--ignore-not-found"],
            None,
        );
    }
}

/// Creates a ContractPolicy (cluster-scoped) that matches only `namespaces`, and waits until the
/// webhook's caches have it (its audit writes the policy's status).
pub fn create_policy(name: &str, action: &str, namespaces: &[&str], required: &[&str], extra: &str) -> Policy {
    let yaml = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {name}}}\nspec:\n  enforcementAction: {action}\n  match: {{namespaces: [{}]}}\n  failover: {{requiredRegions: [{}]}}\n{extra}",
        namespaces.join(", "),
        required.join(", ")
    );
    kubectl(&["apply", "-f", "-"], Some(&yaml)).ok();
    wait_until("the webhook to audit the new policy", Duration::from_secs(30), || {
        let r = kubectl(&["get", "contractpolicy", name, "-o", "jsonpath={.status.auditTime}"], None);
        (r.success && !r.stdout.trim().is_empty()).then_some(())
    });
    Policy { name: name.to_owned() }
}

/// A ContractPolicy deleted when dropped.
#[derive(Debug)]
pub struct Policy {
    /// Its name.
    pub name: String,
}

impl Drop for Policy {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "contractpolicy", &self.name, "--ignore-not-found", "--wait=false"], None);
    }
}

/// The serial number of the certificate a TLS server on 127.0.0.1:`port` presents (openssl), or empty.
pub fn served_serial(port: u16) -> String {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername 127.0.0.1 </dev/null 2>/dev/null | openssl x509 -noout -serial"
    ));
    crate::run(cmd, None).stdout.trim().to_owned()
}

/// A steady stream of `kubectl create` of compliant Services through the API server, on a thread of its
/// own, counting what was admitted and keeping what failed.
#[derive(Debug)]
pub struct AdmissionStream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    admitted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdmissionStream {
    /// Starts creating Services `stream-<i>` in `namespace`, each from `manifest(name)`.
    pub fn start(namespace: &str, manifest: impl Fn(&str) -> String + Send + 'static) -> Self {
        use std::sync::atomic::Ordering;
        let stream =
            Self { stop: Default::default(), admitted: Default::default(), failures: Default::default(), thread: None };
        let (stop, admitted, failures, ns) =
            (stream.stop.clone(), stream.admitted.clone(), stream.failures.clone(), namespace.to_owned());
        let thread = std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = kubectl(&["create", "-n", &ns, "-f", "-"], Some(&manifest(&format!("stream-{i}"))));
                if r.success {
                    admitted.fetch_add(1, Ordering::Relaxed);
                } else if let Ok(mut f) = failures.lock() {
                    f.push(r.stderr);
                }
                i += 1;
            }
        });
        Self { thread: Some(thread), ..stream }
    }

    /// Admissions so far.
    pub fn admitted(&self) -> usize {
        self.admitted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the stream; returns the error output of every create that failed.
    pub fn stop(mut self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the admission stream thread");
        }
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
    }
}
