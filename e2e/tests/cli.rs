//! `kubectl contracts` as users run it: the built binary, called as a kubectl plugin by the real kubectl
//! where a pipeline would, against a real API server, a real webhook, real Envoys and a real XML Schema
//! validator.
//!
//! The admission table (`e2e/testdata/admission`) runs twice, through `kubectl contracts test` and against
//! the live webhook with kubectl, and must get the same answers word for word.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::fleet::ControlPlane;
use e2e::webhook::{NAMESPACE_LABEL, WebhookFixture};
use e2e::xds::{ProxySpec, XdsBed, xds_operator};
use e2e::{kubectl, product_bin, repo_root, table, tool, unique, wait_until};
use serde_json::Value;

/// What a run of the binary gave.
#[derive(Debug)]
struct Exit {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `kubectl-contracts` with `args` in `dir`, with `path` as PATH (None: the test's own PATH).
fn contracts_in(dir: &Path, args: &[&str], path: Option<&str>) -> Exit {
    let mut cmd = Command::new(product_bin("kubectl-contracts"));
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    let out = cmd.output().expect("kubectl-contracts runs");
    Exit {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn contracts(args: &[&str]) -> Exit {
    contracts_in(&repo_root(), args, None)
}

/// A PATH with the product's binaries (kubectl-contracts) and the test tools (kubectl, envoy) first.
fn plugin_path() -> String {
    let bin = product_bin("kubectl-contracts");
    let product = bin.parent().expect("the target folder");
    format!("{}:{}:/usr/bin:/bin", product.display(), e2e::bin_dir().display())
}

/// The admission table, copied with every `cli-table-` name made `cli-<id>-`.
fn admission_table(id: &str) -> (tempfile::TempDir, PathBuf) {
    table::copy(id, |_, text| text)
}

#[test]
fn the_admission_table_gets_the_same_answers_from_kubectl_contracts_test_and_from_the_live_webhook() {
    let webhook = WebhookFixture::start("cli-table");
    let id = unique("t").replace('-', "");
    let (dir, suite_file) = admission_table(&id);

    // Path 1: the binary, offline.
    let offline = table::offline_answers(dir.path());

    // Path 2: the live webhook, on the table's cluster under this webhook.
    let loaded = cli::suite::load(&suite_file).expect("the table loads");
    let _cleanup = table::set_up(&e2e::kubeconfig(), dir.path(), &loaded, &[(NAMESPACE_LABEL, webhook.id.as_str())]);

    // The webhook learns of the contract through its watch: the table is asked again until both paths
    // agree, for at most 20 s; what still differs then is the failure.
    let started = Instant::now();
    let (differences, rounds) =
        table::ask_until(&e2e::kubeconfig(), &loaded, &offline, Duration::from_secs(20), |live, offline| {
            live.decision == offline.decision
                && live.message == offline.message
                && live.warnings == offline.warnings
                && live.denied_by.is_none_or(|by| by == "webhook")
        });
    assert!(differences.is_empty(), "the two paths differ:\n{}", differences.join("\n"));
    println!(
        "measured: {} cases, the same answer from kubectl contracts test and the live webhook (round {rounds}, {:.1}s)",
        offline.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn test_writes_junit_that_a_real_schema_validator_accepts_and_exits_by_the_result() {
    let (dir, _) = admission_table("junit");
    let validate = |xml: &Path| {
        let out = Command::new("java")
            .arg(repo_root().join("e2e/tools/xsd/Validate.java"))
            .arg(tool("schemas/junit-10.xsd"))
            .arg(xml)
            .output()
            .expect("java runs (a JDK: .ci/run installs one)");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    // All pass: exit 0, valid JUnit, 20 test cases.
    let passing = dir.path().join("passing.xml");
    let r = contracts_in(dir.path(), &["test", ".", "--junit", &passing.to_string_lossy()], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("1 suite, 20 cases: 20 passed, 0 failed"), "{}", r.stderr);
    let (code, said) = validate(&passing);
    assert_eq!(code, Some(0), "{said}");
    let xml = std::fs::read_to_string(&passing).expect("the JUnit file");
    assert_eq!(xml.matches("<testcase ").count(), 20, "{xml}");

    // The validator is not a rubber stamp: what quick-junit and others write on <testsuites> fails it.
    let bad = dir.path().join("bad.xml");
    std::fs::write(&bad, xml.replace("<testsuites>", "<testsuites skipped=\"0\">")).expect("write");
    assert_eq!(validate(&bad).0, Some(1), "an attribute the schema does not allow is refused");

    // A failing case and a suite that cannot be read: exit 2 (a suite is broken), JUnit still valid, with
    // the failure and the error in it, and JSON on standard output in the same run.
    let suite = std::fs::read_to_string(dir.path().join("suite.yaml")).expect("suite");
    let failing = suite.replacen("expect: {decision: Allow, warnings: []}", "expect: {decision: Deny}", 1);
    std::fs::write(dir.path().join("suite.yaml"), failing).expect("write");
    let failing_xml = dir.path().join("failing.xml");
    let r = contracts_in(dir.path(), &["test", "suite.yaml", "--junit", &failing_xml.to_string_lossy()], None);
    assert_eq!(r.code, 1, "a failed case exits 1:\n{}", r.stderr);
    assert!(
        r.stderr.contains("FAIL  a compliant Service is admitted without a word\n        expected Deny, got Allow"),
        "{}",
        r.stderr
    );
    let (code, said) = validate(&failing_xml);
    assert_eq!(code, Some(0), "{said}");
    let xml = std::fs::read_to_string(&failing_xml).expect("the JUnit file");
    assert!(
        xml.contains("failures=\"1\"")
            && xml.contains("<failure type=\"UnexpectedAnswer\" message=\"expected Deny, got Allow\">"),
        "{xml}"
    );

    std::fs::write(
        dir.path().join("broken-suite.yaml"),
        "apiVersion: cli.contracts.dev/v1alpha1\nkind: Suite\nmetadata: {name: broken}\ncases: [{name: x}]\n",
    )
    .expect("write");
    let both = dir.path().join("both.xml");
    let r = contracts_in(dir.path(), &["test", ".", "--junit", &both.to_string_lossy(), "-o", "json"], None);
    assert_eq!(r.code, 2, "a suite that cannot be read exits 2:\n{}", r.stderr);
    assert!(r.stderr.contains("ERROR ") && r.stderr.contains("broken-suite.yaml: not a suite: "), "{}", r.stderr);
    let json: Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!((json["totals"]["broken"].as_u64(), json["totals"]["failed"].as_u64()), (Some(1), Some(1)), "{json}");
    let (code, said) = validate(&both);
    assert_eq!(code, Some(0), "{said}");
    assert!(std::fs::read_to_string(&both).expect("xml").contains("<error type=\"SuiteError\""));

    // Nothing to run is not a pass.
    let empty = tempfile::tempdir().expect("dir");
    let r = contracts_in(empty.path(), &["test", "."], None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("error: no suite (kind: Suite, apiVersion: cli.contracts.dev/v1alpha1) in ."),
        "{}",
        r.stderr
    );
}

/// The steps of the example workflow, by name: their `run` commands.
fn workflow_steps() -> BTreeMap<String, String> {
    let path = repo_root().join("examples/gitops/.github/workflows/channel-contracts.yaml");
    let workflow: Value = yaml_serde::from_str(&std::fs::read_to_string(&path).expect("the workflow")).expect("YAML");
    workflow["jobs"]["policies"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| Some((s["name"].as_str()?.to_owned(), s["run"].as_str()?.to_owned())))
        .collect()
}

#[test]
fn the_example_workflow_steps_pass_on_the_example_repository_and_fail_on_a_denied_manifest() {
    let steps = workflow_steps();
    let repo = tempfile::tempdir().expect("dir");
    copy_dir(&repo_root().join("examples/gitops"), repo.path());
    let step = |name: &str| {
        let script = steps.get(name).unwrap_or_else(|| panic!("the workflow has a step {name:?}: {steps:?}"));
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(repo.path())
            .env("PATH", plugin_path())
            .output()
            .expect("bash");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    // kubectl itself finds the plugin on PATH.
    let (code, said) = step("Policy tests");
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("7 cases: 7 passed, 0 failed"), "{said}");
    assert!(repo.path().join("test-results/policies.xml").is_file(), "the JUnit file for the CI system");
    let (code, said) = step("Check the manifests");
    assert_eq!(code, Some(0), "a warning does not fail the check:\n{said}");
    assert!(said.contains("WARN   Service shop/cart") && said.contains("0 denied, 1 warned"), "{said}");

    // A Service in production without regions: the same step fails, and says what to fix.
    std::fs::write(
        repo.path().join("apps/payments/refunds.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: refunds, namespace: payments}\nspec: {ports: [{port: 8080}]}\n",
    )
    .expect("write");
    let (code, said) = step("Check the manifests");
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("DENY   Service payments/refunds (apps/payments/refunds.yaml): ContractPolicy \"national-baseline\" denied Service payments/refunds: missing failover regions [gz, sz, hz]"),
        "{said}"
    );
    // --strict fails on the warning alone.
    let r = contracts_in(repo.path(), &["check", "-f", "apps/shop", "--policies", "policies/", "--strict"], None);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

#[test]
fn check_writes_openreports_that_the_real_api_server_accepts() {
    let cp = ControlPlane::start_in("cli-openreports", e2e::run_dir("cp-cli-openreports"), true);
    e2e::apply_crds(&cp.kubeconfig());
    let crd = tool("crds/openreports.io_reports.yaml");
    cp.kubectl(&["apply", "--server-side", "-f", &crd.to_string_lossy()], None).ok();
    cp.kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "crd/reports.openreports.io"], None).ok();
    for ns in ["payments", "shop"] {
        cp.namespace(ns, &[]);
    }
    let gitops = repo_root().join("examples/gitops");
    let r = contracts_in(&gitops, &["check", "-f", "apps/", "--policies", "policies/", "-o", "openreports"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.matches("kind: Report").count(), 2, "a Report per namespace:\n{}", r.stdout);
    let applied = cp.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&r.stdout));
    assert!(applied.success, "the API server validates the Reports:\n{}\n{}", applied.stderr, r.stdout);
    for ns in ["payments", "shop"] {
        let line = "report.openreports.io/channel-contracts-check created (server dry run)";
        assert!(applied.stdout.contains(line), "{ns}: {}", applied.stdout);
    }
    let reports: Vec<Value> = r
        .stdout
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| yaml_serde::from_str(d).expect("YAML"))
        .collect();
    let shop = reports.iter().find(|r| r["metadata"]["namespace"] == "shop").expect("shop");
    assert_eq!(shop["summary"]["warn"], 1, "{shop}");
    assert_eq!(shop["results"][0]["policy"], "shop-soft-landing");
    let payments = reports.iter().find(|r| r["metadata"]["namespace"] == "payments").expect("payments");
    assert_eq!(
        (payments["summary"]["pass"].as_u64(), payments["summary"]["fail"].as_u64()),
        (Some(4), Some(0)),
        "{payments}"
    );
}

#[test]
fn render_validate_asks_a_real_envoy_and_says_so_when_there_is_none() {
    let dir = tempfile::tempdir().expect("dir");
    let endpoints = dir.path().join("endpoints.yaml");
    std::fs::write(
        &endpoints,
        "channels:\n  primary:\n  - {address: 10.0.0.7, port: 8080, region: gz, ready: true}\n  - {address: 10.0.1.7, port: 8080, region: sz, ready: true}\n  cache:\n  - {address: 10.0.2.7, port: 8080, region: gz, ready: true}\n",
    )
    .expect("write");
    let contract = repo_root().join("examples/channelcontract-payment-verify.yaml");
    let args = ["render", "-f", &contract.to_string_lossy(), "--endpoints", &endpoints.to_string_lossy(), "--validate"];
    let r = contracts_in(dir.path(), &args, Some(&plugin_path()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("# configVersion: sha256:") && r.stdout.contains("# cds.yaml"), "{}", r.stdout);
    assert!(r.stderr.contains("Envoy accepts the configuration sha256:") && r.stderr.contains("envoy"), "{}", r.stderr);

    // No Envoy on PATH: a clear error, exit 2, and no verdict.
    let r = contracts_in(dir.path(), &args, Some("/usr/bin:/bin"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--validate needs Envoy, and there is no `envoy` on PATH (/usr/bin:/bin)"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("accepts"), "{}", r.stderr);

    // An invalid contract: exit 1, every broken rule.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ChannelContract\nmetadata: {name: b}\nspec: {service: b, port: 8080, sla: {maxLatency: 0s}, failover: {regions: [gz, gz]}}\n",
    )
    .expect("write");
    let r = contracts(&["render", "-f", &broken.to_string_lossy()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("ChannelContract default/b is invalid:"), "{}", r.stderr);
}

const PORT: u16 = 18080;

/// A ClusterRoleBinding deleted when dropped.
struct Unbind(String);

impl Drop for Unbind {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "clusterrolebinding", &self.0, "--ignore-not-found"], None);
    }
}

#[test]
fn drill_waits_for_the_verdict_and_exits_by_it_and_status_shows_it() {
    let operator = xds_operator();
    let log = || format!("--- operator log ---\n{}", operator.log_tail());
    let mut bed = XdsBed::new("cli-drill");
    for b in ["gz-1", "sz-1"] {
        bed.start_backend(b);
    }
    bed.service("pay", PORT, &[("gz-1", "gz"), ("sz-1", "sz")]);
    let spec = "  service: pay\n  port: 18080\n  sla: {maxLatency: 3s}\n  retry:\n    maxRetries: 3\n    backoff: {baseInterval: 10ms, maxInterval: 50ms}\n  circuitBreaker: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}\n  failover: {regions: [gz, sz]}\n";
    bed.contract(operator, "pay", spec);
    bed.start_proxy(operator, ProxySpec::new("proxy-gz", "gz", 2, 19311));
    bed.wait_status("pay", "1/1 acked", Duration::from_secs(60), &log, |c| c["status"]["proxies"]["acked"] == 1);
    bed.settles_on("proxy-gz", "pay", PORT, "gz-1", 10, Duration::from_secs(30));
    let ns = bed.ns.name.clone();
    // The command runs as a user gets it: a ServiceAccount with Kubernetes' built-in `edit` in the
    // namespace and `view` cluster-wide, into which the chart's user roles aggregate.
    e2e::rbac::ensure_chart_rbac();
    let user = "cli-user";
    let subject = format!("--serviceaccount={ns}:{user}");
    kubectl(&["create", "serviceaccount", user, "-n", &ns], None).ok();
    kubectl(&["create", "rolebinding", "cli-user-edit", "--clusterrole=edit", &subject, "-n", &ns], None).ok();
    let view = Unbind(format!("cli-user-view-{ns}"));
    kubectl(&["create", "clusterrolebinding", &view.0, "--clusterrole=view", &subject], None).ok();
    let as_user = format!("system:serviceaccount:{ns}:{user}");
    for (verb, resource, scope) in [
        ("create", "contractdrills.csp.contracts.dev", ns.as_str()),
        ("watch", "contractdrills.csp.contracts.dev", ns.as_str()),
        ("list", "contractpolicies.csp.contracts.dev", ""),
    ] {
        wait_until(&format!("{as_user} to {verb} {resource}"), Duration::from_secs(30), || {
            let mut args = vec!["auth", "can-i", verb, resource, "--as", &as_user];
            if !scope.is_empty() {
                args.extend(["-n", scope]);
            }
            (kubectl(&args, None).stdout.trim() == "yes").then_some(())
        });
    }
    let r = kubectl(&["auth", "can-i", "create", "contractpolicies.csp.contracts.dev", "--as", &as_user], None);
    assert_eq!(r.stdout.trim(), "no", "policies stay with cluster administrators");
    let kubeconfig = e2e::rbac::kubeconfig_for_at(&e2e::kubeconfig(), &ns, user);

    let drill = |extra: &[&str]| {
        let mut args = vec!["contracts", "drill", "pay", "-n", &ns, "--region", "gz", "--duration", "8s", "--wait"];
        args.extend_from_slice(extra);
        // Through kubectl, as users call a plugin; the plugin reads KUBECONFIG as kubectl does.
        let child = Command::new(tool("kubectl"))
            .args(&args)
            .env("PATH", plugin_path())
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl contracts drill");
        // Traffic while the drill runs: the switchover is measured from it.
        let started = Instant::now();
        let mut child = child;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "the drill command did not end");
            let _ = bed.get_many("proxy-gz", "pay", PORT, 1, &[]);
            std::thread::sleep(Duration::from_millis(100));
        };
        let out = child.wait_with_output().expect("output");
        (
            status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = drill(&["--within", "5s"]);
    println!("$ kubectl contracts drill pay -n {ns} --region gz --duration 8s --wait --within 5s\n{out}{err}");
    assert_eq!(code, Some(0), "a Passed drill exits 0:\n{out}\n{err}\n{}", log());
    assert!(out.contains("created: region=gz abort=503@100% for 8s, promise 5s"), "{out}");
    assert!(out.contains("phase Running") && out.contains("phase Passed"), "the progress, as it happens:\n{out}");
    assert!(out.contains("proxy proxy-gz switched over in "), "{out}");
    bed.settles_on("proxy-gz", "pay", PORT, "gz-1", 10, Duration::from_secs(20));

    // The same drill with an impossible promise: Failed, exit 1. Without --within, the promise would be
    // the last drill's (5s).
    let (code, out, err) = drill(&["--within", "1ms"]);
    assert_eq!(code, Some(1), "a Failed drill exits 1:\n{out}\n{err}");
    assert!(out.contains("phase Failed") && out.contains("longer than the promised 1ms"), "{out}");

    // status, through kubectl: the contract with its proxies, channels and last drill.
    let r = Command::new(tool("kubectl"))
        .args(["contracts", "status", "-n", &ns])
        .env("PATH", plugin_path())
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("kubectl contracts status");
    let table = String::from_utf8_lossy(&r.stdout).into_owned();
    println!("$ kubectl contracts status -n {ns}\n{table}");
    assert!(r.status.success(), "{table}{}", String::from_utf8_lossy(&r.stderr));
    let row = table.lines().find(|l| l.starts_with(&ns)).unwrap_or_else(|| panic!("a row for {ns}:\n{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..6], [ns.as_str(), "pay", "pay", "True", "1/1", "acked"], "{table}");
    assert!(row.contains("Failed "), "the last drill: {table}");
    let json = contracts(&["status", "-n", &ns, "-o", "json", "--kubeconfig", &kubeconfig.to_string_lossy()]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let v: Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(v["contracts"][0]["proxies"], "1/1 acked", "{v}");

    // A contract that is not there, and a cluster that is not there: clear errors, exit 2.
    let r = contracts(&[
        "drill",
        "nope",
        "-n",
        &ns,
        "--region",
        "gz",
        "--within",
        "1s",
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("there is no ChannelContract {ns}/nope")), "{}", r.stderr);
    let gone = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(
        gone.path(),
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
    )
    .expect("write");
    let r = contracts(&["status", "--kubeconfig", &gone.path().to_string_lossy()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.starts_with("error: cannot list the ChannelContracts: "), "{}", r.stderr);
}
