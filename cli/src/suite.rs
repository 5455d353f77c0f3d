//! `kubectl contracts test`: policy tests in files.
//!
//! A suite is a YAML file (`apiVersion: cli.contracts.dev/v1alpha1`, `kind: Suite`; its JSON Schema is
//! `cli/suite.schema.json`, printed by `kubectl contracts schema`):
//!
//! ```yaml
//! apiVersion: cli.contracts.dev/v1alpha1
//! kind: Suite
//! metadata: {name: national-baseline}
//! policies: [../policies]          # files or directories of ContractPolicies, relative to this file
//! objects: [cluster.yaml]          # what the cluster holds: Namespaces (labels), ChannelContracts
//! cases:
//! - name: a Service without failover regions is denied
//!   namespace: payments            # default: the object's, else `default`
//!   object: services/bare.yaml     # a file with one object, or the object inline
//!   expect:
//!     decision: Deny               # Allow | Warn | Deny
//!     message: 'missing failover regions \[gz, sz, hz\]'   # a regex: the denial, or a warning
//! - name: labelling an old Service that falls short only warns
//!   oldObject: {apiVersion: v1, kind: Service, ...}        # makes it an UPDATE
//!   object: {apiVersion: v1, kind: Service, ...}
//!   expect: {decision: Warn, warnings: ['would deny']}
//! ```
//!
//! Each case is judged by the webhook's own code ([`crate::offline`]). A case passes when the decision is
//! the expected one, `message` matches the denial (Deny) or some warning (Warn), and each of `warnings`
//! matches some warning (`warnings: []`: none at all).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::manifests::{self, Manifest};
use crate::offline::{Cluster, DEFAULT_NAMESPACE, Decision, Judgement};

/// The suites' apiVersion.
pub const API_VERSION: &str = "cli.contracts.dev/v1alpha1";
/// The suites' kind.
pub const KIND: &str = "Suite";

/// A test suite file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "kubectl contracts test suite")]
pub struct Suite {
    /// `cli.contracts.dev/v1alpha1`.
    #[schemars(regex(pattern = r"^cli\.contracts\.dev/v1alpha1$"))]
    pub api_version: String,
    /// `Suite`.
    #[schemars(regex(pattern = r"^Suite$"))]
    pub kind: String,
    /// The suite's name (the JUnit test suite's name).
    pub metadata: SuiteMetadata,
    /// Files or directories of ContractPolicies, relative to the suite file (other documents there are
    /// left alone: tests often live next to their policies).
    #[serde(default)]
    pub policies: Vec<String>,
    /// Files or directories of what the cluster holds, relative to the suite file: Namespaces (their labels
    /// select policies, and opt out of the webhook) and ChannelContracts (they govern their Services).
    #[serde(default)]
    pub objects: Vec<String>,
    /// Namespaces the webhook is told never to judge (its `--exempt-namespaces`), besides kube-system,
    /// kube-public and kube-node-lease.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exempt_namespaces: Vec<String>,
    /// The cases.
    #[schemars(length(min = 1))]
    pub cases: Vec<Case>,
}

/// A suite's metadata.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SuiteMetadata {
    /// The suite's name.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// One request and the answer it must get.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Case {
    /// What the case shows (the JUnit test case's name).
    #[schemars(length(min = 1))]
    pub name: String,
    /// The namespace of the request. Default: the object's `metadata.namespace`, else `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The object created (or, with `oldObject`, the object it is updated to).
    pub object: ObjectSource,
    /// The object before: the request is an UPDATE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_object: Option<ObjectSource>,
    /// The answer it must get.
    pub expect: Expect,
}

/// An object: a file with exactly one, relative to the suite file, or the object inline.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ObjectSource {
    /// A file holding one object.
    File(String),
    /// The object.
    Inline(serde_json::Map<String, Value>),
}

/// The expected answer.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expect {
    /// Allow (admitted without a warning), Warn (admitted with warnings) or Deny.
    pub decision: Decision,
    /// A regular expression that the denial message (Deny) or some warning (Warn) must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Regular expressions that must each match some warning; `[]`: no warning at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

/// A suite, read and ready to run.
#[derive(Debug)]
pub struct Loaded {
    /// The file.
    pub file: PathBuf,
    /// The suite.
    pub suite: Suite,
    /// The cluster its policies and objects make.
    pub cluster: Cluster,
    /// Each case's object, old object and namespace.
    pub requests: Vec<Request>,
}

/// A case's request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The object.
    pub object: Value,
    /// The old object (UPDATE).
    pub old_object: Option<Value>,
    /// The namespace.
    pub namespace: String,
}

/// Why a suite cannot run.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct SuiteError {
    /// The suite file.
    pub file: String,
    /// What is wrong.
    pub reason: String,
}

/// Every suite file among `paths`: files as given, and in directories every YAML file whose `kind` is
/// `Suite` of [`API_VERSION`].
pub fn find(paths: &[PathBuf]) -> Result<Vec<PathBuf>, manifests::ManifestError> {
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            out.push(path.clone());
            continue;
        }
        for file in manifests::files(path)? {
            let text = manifests::read_text(&file)?;
            // A suite that is not even YAML is still a suite: its error must be seen, not skipped.
            let is_suite = match manifests::parse(&file.display().to_string(), &text) {
                Ok(docs) => docs.iter().any(|d| d.api_version() == API_VERSION && d.kind() == KIND),
                Err(_) => text.contains(API_VERSION),
            };
            if is_suite {
                out.push(file);
            }
        }
    }
    Ok(out)
}

/// Reads a suite and everything it names.
pub fn load(file: &Path) -> Result<Loaded, SuiteError> {
    let error = |reason: String| SuiteError { file: file.display().to_string(), reason };
    let text = manifests::read_text(file).map_err(|e| error(e.to_string()))?;
    let suite: Suite = yaml_serde::from_str(&text).map_err(|e| error(format!("not a suite: {e}")))?;
    if suite.api_version != API_VERSION || suite.kind != KIND {
        return Err(error(format!(
            "apiVersion {:?} and kind {:?}; a suite is apiVersion {API_VERSION:?}, kind {KIND:?}",
            suite.api_version, suite.kind
        )));
    }
    if suite.cases.is_empty() {
        return Err(error("it has no cases".to_owned()));
    }
    let base = file.parent().unwrap_or(Path::new("."));
    let resolve = |p: &str| base.join(p);
    let mut cluster = Cluster::new(suite.exempt_namespaces.clone());
    let policies = manifests::load(&suite.policies.iter().map(|p| resolve(p)).collect::<Vec<_>>())
        .map_err(|e| error(e.to_string()))?;
    // Policies often live next to their tests: what is not a ContractPolicy there is not one of them.
    for m in policies.iter().filter(|m| m.group() == crds::GROUP && m.kind() == "ContractPolicy") {
        cluster.add_policy(m).map_err(|e| error(e.to_string()))?;
    }
    if !suite.policies.is_empty() && cluster.policies().next().is_none() {
        return Err(error(format!("no ContractPolicy in {}", suite.policies.join(", "))));
    }
    let objects = manifests::load(&suite.objects.iter().map(|p| resolve(p)).collect::<Vec<_>>())
        .map_err(|e| error(e.to_string()))?;
    for m in &objects {
        if !cluster.add_object(m, DEFAULT_NAMESPACE) {
            return Err(error(format!(
                "{}: objects holds what the webhook knows of a cluster, Namespaces and ChannelContracts; this is a {}",
                m.source,
                m.describe()
            )));
        }
    }
    let mut requests = Vec::new();
    for case in &suite.cases {
        let in_case = |reason: String| error(format!("case {:?}: {reason}", case.name));
        let object = object_of(&case.object, base).map_err(&in_case)?;
        let old_object = case.old_object.as_ref().map(|o| object_of(o, base)).transpose().map_err(&in_case)?;
        check_expect(&case.expect).map_err(&in_case)?;
        let namespace = case
            .namespace
            .clone()
            .or_else(|| object.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        requests.push(Request { object, old_object, namespace });
    }
    Ok(Loaded { file: file.to_owned(), suite, cluster, requests })
}

fn object_of(source: &ObjectSource, base: &Path) -> Result<Value, String> {
    let manifest: Manifest = match source {
        ObjectSource::Inline(map) => {
            let mut found = manifests::parse("the inline object", &serde_json::to_string(map).unwrap_or_default())
                .map_err(|e| e.to_string())?;
            found.pop().ok_or("the inline object is empty")?
        }
        ObjectSource::File(path) => {
            let mut found = manifests::load(&[base.join(path)]).map_err(|e| e.to_string())?;
            if found.len() != 1 {
                return Err(format!("{path} must hold exactly one object; it holds {}", found.len()));
            }
            found.remove(0)
        }
    };
    Ok(manifest.value)
}

fn check_expect(expect: &Expect) -> Result<(), String> {
    if expect.message.is_some() && expect.decision == Decision::Allow {
        return Err("expect.message is what a Deny or a Warn says; an Allow says nothing".to_owned());
    }
    for pattern in expect.message.iter().chain(expect.warnings.iter().flatten()) {
        Regex::new(pattern).map_err(|e| format!("expect: {pattern:?} is not a regular expression: {e}"))?;
    }
    Ok(())
}

/// The result of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What was expected.
    pub expected: Expect,
    /// What the webhook answered.
    pub got: Judgement,
    /// Why it failed, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// How long it took.
    #[serde(skip)]
    pub time: Duration,
}

/// The result of one suite.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteResult {
    /// The suite's name (its file's when it could not be read).
    pub name: String,
    /// The file.
    pub file: String,
    /// Why it could not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its cases.
    pub cases: Vec<CaseResult>,
}

impl SuiteResult {
    /// How many cases failed.
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed).count()
    }
}

/// Runs a suite file.
pub fn run(file: &Path) -> SuiteResult {
    match load(file) {
        Ok(loaded) => run_loaded(&loaded),
        Err(e) => SuiteResult {
            name: file.display().to_string(),
            file: file.display().to_string(),
            error: Some(e.to_string()),
            cases: Vec::new(),
        },
    }
}

/// Runs a suite that was read.
pub fn run_loaded(loaded: &Loaded) -> SuiteResult {
    let cases = loaded
        .suite
        .cases
        .iter()
        .zip(&loaded.requests)
        .map(|(case, request)| {
            let started = Instant::now();
            let got = loaded.cluster.judge(&request.object, request.old_object.as_ref(), &request.namespace);
            let failures = compare(&case.expect, &got);
            CaseResult {
                name: case.name.clone(),
                passed: failures.is_empty(),
                expected: case.expect.clone(),
                got,
                failures,
                time: started.elapsed(),
            }
        })
        .collect();
    SuiteResult {
        name: loaded.suite.metadata.name.clone(),
        file: loaded.file.display().to_string(),
        error: None,
        cases,
    }
}

/// Why an answer is not the expected one; empty when it is.
pub fn compare(expect: &Expect, got: &Judgement) -> Vec<String> {
    let mut failures = Vec::new();
    if got.decision != expect.decision {
        let said = got.message.iter().chain(&got.warnings).cloned().collect::<Vec<_>>().join(" | ");
        let said = if said.is_empty() { String::new() } else { format!(": {said}") };
        failures.push(format!("expected {}, got {}{said}", expect.decision, got.decision));
    }
    let matches = |pattern: &str, text: &str| Regex::new(pattern).is_ok_and(|r| r.is_match(text));
    if let Some(pattern) = &expect.message {
        let found = match got.decision {
            Decision::Deny => got.message.iter().any(|m| matches(pattern, m)),
            Decision::Warn => got.warnings.iter().any(|w| matches(pattern, w)),
            Decision::Allow => false,
        };
        if !found {
            let said: Vec<&String> = got.message.iter().chain(&got.warnings).collect();
            failures.push(format!("no message matches /{pattern}/; the webhook said {said:?}"));
        }
    }
    match &expect.warnings {
        Some(patterns) if patterns.is_empty() && !got.warnings.is_empty() => {
            failures.push(format!("expected no warning, got {:?}", got.warnings));
        }
        Some(patterns) => {
            for pattern in patterns {
                if !got.warnings.iter().any(|w| matches(pattern, w)) {
                    failures.push(format!("no warning matches /{pattern}/; the warnings were {:?}", got.warnings));
                }
            }
        }
        None => {}
    }
    failures
}

/// The JSON Schema of suite files.
pub fn schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Suite)).unwrap_or_default()
}

#[cfg(test)]
mod tests;
