//! The admission table (`e2e/testdata/admission`): the webhook's e2e cases as a `kubectl contracts test`
//! suite, copied per run, answered offline by `kubectl-contracts` and live through kubectl, so that tests
//! can require the same answers from every path (the webhook, generated ValidatingAdmissionPolicies).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Run, kubectl_at, product_bin, repo_root, wait_until};

/// The table, copied with every `cli-table-` name made `cli-<id>-` (so that its namespaces and policies
/// are this run's own), and `edit` applied to each file's text.
pub fn copy(id: &str, edit: impl Fn(&str, String) -> String) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a folder");
    let source = repo_root().join("e2e/testdata/admission");
    for entry in std::fs::read_dir(&source).expect("the admission table") {
        let path = entry.expect("an entry").path();
        let text = std::fs::read_to_string(&path).expect("a file of the table");
        let name = path.file_name().expect("a name").to_string_lossy().into_owned();
        let text = edit(&name, text.replace("cli-table-", &format!("cli-{id}-")));
        std::fs::write(dir.path().join(&name), text).expect("copy");
    }
    let suite = dir.path().join("suite.yaml");
    (dir, suite)
}

/// Every case's offline answer (`kubectl contracts test -o json`): its `got` objects, in order.
pub fn offline_answers(dir: &Path) -> Vec<Value> {
    let out = Command::new(product_bin("kubectl-contracts"))
        .args(["test", "suite.yaml", "-o", "json"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("kubectl-contracts runs");
    assert_eq!(out.status.code(), Some(0), "every case passes offline:\n{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on standard output");
    report["suites"][0]["cases"].as_array().cloned().expect("cases").into_iter().map(|c| c["got"].clone()).collect()
}

/// An answer through kubectl: the decision, the denial message and the warnings, each without what the
/// API server puts in front of it (`admission webhook "…" denied the request: `, `ValidatingAdmissionPolicy
/// '…' with binding '…' denied request: `, `Validation failed for ValidatingAdmissionPolicy '…' with
/// binding '…': `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Allow, Warn or Deny.
    pub decision: String,
    /// The denial's message.
    pub message: Option<String>,
    /// The warnings.
    pub warnings: Vec<String>,
    /// Who denied: `webhook`, `vap` or `other`.
    pub denied_by: Option<&'static str>,
}

/// Reads kubectl's answer.
pub fn live_answer(r: &Run) -> Answer {
    const VAP_WARNING: &str = "Validation failed for ValidatingAdmissionPolicy '";
    let warnings: Vec<String> = r
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("Warning: "))
        .map(|w| match w.strip_prefix(VAP_WARNING).and_then(|rest| rest.split_once("': ")) {
            Some((_, message)) => message.to_owned(),
            None => w.to_owned(),
        })
        .collect();
    if r.success {
        let decision = if warnings.is_empty() { "Allow" } else { "Warn" };
        return Answer { decision: decision.to_owned(), message: None, warnings, denied_by: None };
    }
    let (message, by) = if let Some((_, m)) = r.stderr.split_once("denied the request: ") {
        (m.trim_end().to_owned(), "webhook")
    } else if let Some((_, m)) = r.stderr.split_once("' denied request: ") {
        (m.trim_end().to_owned(), "vap")
    } else {
        (format!("(not an admission denial) {}", r.stderr.trim_end()), "other")
    };
    Answer { decision: "Deny".to_owned(), message: Some(message), warnings, denied_by: Some(by) }
}

/// The offline answer of a case as an [`Answer`] (who denied: none).
pub fn offline_answer(got: &Value) -> Answer {
    Answer {
        decision: got["decision"].as_str().unwrap_or_default().to_owned(),
        message: got["message"].as_str().map(str::to_owned),
        warnings: got["warnings"]
            .as_array()
            .map(|w| w.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default(),
        denied_by: None,
    }
}

/// The table's cluster on the control plane of `admin`: its namespaces (with `labels` more), the old
/// objects of its updates (created before the policies, as an old object is), its contract, then its
/// policies, audited. Returns what to delete afterwards.
pub fn set_up(admin: &Path, dir: &Path, loaded: &cli::suite::Loaded, labels: &[(&str, &str)]) -> Cleanup {
    let mut namespaces = Vec::new();
    for doc in cli::manifests::load(&[dir.join("cluster.yaml")]).expect("cluster.yaml") {
        if doc.kind() != "Namespace" {
            continue;
        }
        let mut ns = doc.value.clone();
        for (k, v) in labels {
            ns["metadata"]["labels"][*k] = (*v).into();
        }
        ns["metadata"]["labels"]["csp-e2e"] = "true".into();
        kubectl_at(admin, &["apply", "-f", "-"], Some(&ns.to_string())).ok();
        namespaces.push(doc.name().to_owned());
    }
    let cleanup = Cleanup {
        admin: admin.to_path_buf(),
        namespaces,
        policies: loaded.cluster.policies().map(|p| p.metadata.name.clone().unwrap_or_default()).collect(),
    };
    for request in &loaded.requests {
        if let Some(old) = &request.old_object {
            kubectl_at(admin, &["apply", "-n", &request.namespace, "-f", "-"], Some(&old.to_string())).ok();
        }
    }
    for doc in cli::manifests::load(&[dir.join("cluster.yaml")]).expect("cluster.yaml") {
        if doc.kind() == "ChannelContract" {
            kubectl_at(admin, &["apply", "-f", "-"], Some(&doc.value.to_string())).ok();
        }
    }
    kubectl_at(admin, &["apply", "-f", &dir.join("policies.yaml").to_string_lossy()], None).ok();
    for policy in &cleanup.policies {
        wait_until(&format!("the webhook to audit {policy}"), Duration::from_secs(30), || {
            let r = kubectl_at(admin, &["get", "contractpolicy", policy, "-o", "jsonpath={.status.auditTime}"], None);
            (r.success && !r.stdout.trim().is_empty()).then_some(())
        });
    }
    cleanup
}

/// Asks the live API server every case (server-side dry run) until `agree` holds for all, for at most
/// `within` (caches and policies arrive by watches); returns the differences left and the rounds taken.
pub fn ask_until(
    admin: &Path,
    loaded: &cli::suite::Loaded,
    offline: &[Value],
    within: Duration,
    agree: impl Fn(&Answer, &Answer) -> bool,
) -> (Vec<String>, usize) {
    let started = Instant::now();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut differences = Vec::new();
        for ((case, request), got) in loaded.suite.cases.iter().zip(&loaded.requests).zip(offline) {
            let verb = if request.old_object.is_some() { "replace" } else { "create" };
            let r = kubectl_at(
                admin,
                &[verb, "--dry-run=server", "-n", &request.namespace, "-f", "-"],
                Some(&request.object.to_string()),
            );
            let live = live_answer(&r);
            let offline = offline_answer(got);
            if !agree(&live, &offline) {
                differences.push(format!("{}:\n  live:    {live:?}\n  offline: {offline:?}", case.name));
            }
        }
        if differences.is_empty() || started.elapsed() > within {
            return (differences, rounds);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Deletes the table's namespaces and policies.
#[derive(Debug)]
pub struct Cleanup {
    admin: PathBuf,
    /// The namespaces.
    pub namespaces: Vec<String>,
    /// The policies.
    pub policies: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.policies {
            let _ =
                kubectl_at(&self.admin, &["delete", "contractpolicy", p, "--ignore-not-found", "--wait=false"], None);
        }
        for ns in &self.namespaces {
            let _ = kubectl_at(&self.admin, &["delete", "namespace", ns, "--ignore-not-found", "--wait=false"], None);
        }
    }
}
