//! Tests of [`super`].

use std::fs;

use super::*;

/// Fails when `cli/suite.schema.json` differs from what the types generate. Fix: `kubectl contracts schema >
/// cli/suite.schema.json` (or `UPDATE_SCHEMA=1 cargo test -p channel-contracts-cli`).
#[test]
fn the_committed_schema_is_the_one_the_types_make() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("suite.schema.json");
    let want = serde_json::to_string_pretty(&schema()).expect("json") + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        fs::write(&path, &want).expect("write the schema");
    }
    let have = fs::read_to_string(&path).unwrap_or_default();
    assert!(have == want, "{} is stale: run `UPDATE_SCHEMA=1 cargo test -p channel-contracts-cli`", path.display());
}

#[test]
fn the_schema_requires_what_the_loader_requires() {
    let s = schema();
    let required: Vec<&str> = s["required"].as_array().expect("required").iter().filter_map(Value::as_str).collect();
    for field in ["apiVersion", "kind", "metadata", "cases"] {
        assert!(required.contains(&field), "{field} is required: {s}");
    }
    assert_eq!(s["additionalProperties"], false, "unknown fields are refused: {s}");
}

fn suite_dir(suite: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    fs::write(
        dir.path().join("policy.yaml"),
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {name: p}\nspec: {enforcementAction: Deny, match: {namespaces: [pay]}, failover: {requiredRegions: [gz]}}\n",
    )
    .expect("write");
    fs::write(dir.path().join("svc.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: pay}\n")
        .expect("write");
    fs::write(dir.path().join("suite.yaml"), suite).expect("write");
    dir
}

const HEAD: &str =
    "apiVersion: cli.contracts.dev/v1alpha1\nkind: Suite\nmetadata: {name: t}\npolicies: [policy.yaml]\n";

#[test]
fn a_case_from_a_file_takes_its_namespace_and_is_judged() {
    let dir = suite_dir(&format!(
        "{HEAD}cases:\n- name: denied\n  object: svc.yaml\n  expect: {{decision: Deny, message: 'missing failover regions \\[gz\\]'}}\n"
    ));
    let result = run(&dir.path().join("suite.yaml"));
    assert_eq!(result.error, None);
    assert!(result.cases[0].passed, "{:?}", result.cases[0]);
    assert_eq!(result.name, "t");
}

fn load_error(suite: &str) -> String {
    let dir = suite_dir(suite);
    load(&dir.path().join("suite.yaml")).expect_err("refused").to_string()
}

#[test]
fn a_broken_suite_says_what_is_wrong_and_where() {
    let err = load_error(&format!("{HEAD}cases: []\n"));
    assert!(err.ends_with("suite.yaml: it has no cases"), "{err}");
    let err = load_error(&format!(
        "{HEAD}cases:\n- name: x\n  object: svc.yaml\n  expect: {{decision: Allow}}\n  expected: {{decision: Allow}}\n"
    ));
    assert!(err.contains("unknown field `expected`"), "{err}");
    let err = load_error(&format!(
        "{HEAD}cases:\n- name: x\n  object: svc.yaml\n  expect: {{decision: Deny, message: '[unclosed'}}\n"
    ));
    assert!(err.contains("case \"x\": expect: \"[unclosed\" is not a regular expression"), "{err}");
    let err = load_error(&format!(
        "{HEAD}cases:\n- name: x\n  object: svc.yaml\n  expect: {{decision: Allow, message: something}}\n"
    ));
    assert!(err.contains("an Allow says nothing"), "{err}");
    let err = load_error(&format!("{HEAD}cases:\n- name: x\n  object: nowhere.yaml\n  expect: {{decision: Allow}}\n"));
    assert!(err.contains("case \"x\": cannot read ") && err.contains("nowhere.yaml"), "{err}");
    let err = load_error(
        &format!("{HEAD}cases:\n- name: x\n  object: policy.yaml\n  expect: {{decision: Allow}}\n")
            .replace("policies: [policy.yaml]", "policies: [svc.yaml]"),
    );
    assert!(err.ends_with("no ContractPolicy in svc.yaml"), "{err}");
    let err = load_error(&format!(
        "{HEAD}objects: [svc.yaml]\ncases:\n- name: x\n  object: svc.yaml\n  expect: {{decision: Allow}}\n"
    ));
    assert!(err.contains("objects holds what the webhook knows of a cluster"), "{err}");
    let err = load_error(
        &(HEAD.replace("kind: Suite", "kind: Test")
            + "cases:\n- name: x\n  object: svc.yaml\n  expect: {decision: Allow}\n"),
    );
    assert!(err.contains("a suite is apiVersion \"cli.contracts.dev/v1alpha1\", kind \"Suite\""), "{err}");
}

#[test]
fn expectations_on_warnings_are_checked_each() {
    let got = Judgement {
        decision: Decision::Warn,
        message: None,
        warnings: vec!["ContractPolicy \"a\" warns about Service x/y: missing".into()],
        audits: vec![],
        reason: "policy".into(),
    };
    let expect = |decision, message: Option<&str>, warnings: Option<Vec<&str>>| Expect {
        decision,
        message: message.map(str::to_owned),
        warnings: warnings.map(|w| w.into_iter().map(str::to_owned).collect()),
    };
    assert!(compare(&expect(Decision::Warn, Some("warns about"), None), &got).is_empty());
    assert!(compare(&expect(Decision::Warn, None, Some(vec!["\"a\"", "missing"])), &got).is_empty());
    assert_eq!(compare(&expect(Decision::Warn, None, Some(vec!["\"b\""])), &got).len(), 1);
    assert_eq!(compare(&expect(Decision::Warn, None, Some(vec![])), &got).len(), 1, "no warning was expected");
    let failures = compare(&expect(Decision::Deny, Some("denied"), None), &got);
    assert_eq!(failures[0], "expected Deny, got Warn: ContractPolicy \"a\" warns about Service x/y: missing");
    assert_eq!(failures.len(), 2);
}

#[test]
fn directories_yield_their_suites_and_a_suite_that_is_not_yaml_is_not_skipped() {
    let dir = suite_dir(&format!("{HEAD}cases:\n- name: x\n  object: svc.yaml\n  expect: {{decision: Deny}}\n"));
    fs::write(dir.path().join("broken.yaml"), "apiVersion: cli.contracts.dev/v1alpha1\nkind: [Suite\n").expect("write");
    let found = find(&[dir.path().to_owned()]).expect("found");
    let names: Vec<String> =
        found.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["broken.yaml", "suite.yaml"], "policy.yaml and svc.yaml are not suites");
    let broken = run(&found[0]);
    assert!(broken.error.as_deref().is_some_and(|e| e.contains("not a suite")), "{broken:?}");
}
