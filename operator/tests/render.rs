//! `operator render`: snapshots of its output, determinism, and the binary's behaviour on bad input.
//!
//! The snapshots under `tests/snapshots/` are the expected output; a difference fails the test. After an
//! intended change, rewrite them with `UPDATE_SNAPSHOTS=1 cargo test -p channel-contracts-operator --test
//! render` and review the diff.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use operator::model::{ChannelEndpoints, DEFAULT_CONFIG_DIR, ProxyOptions};
use operator::render::{RenderArgs, run};
use proptest::prelude::*;

fn manifest(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn args(file: &str, endpoints: Option<&str>) -> RenderArgs {
    RenderArgs {
        file: manifest(file),
        endpoints: endpoints.map(manifest),
        out_dir: None,
        listen: None,
        config_dir: DEFAULT_CONFIG_DIR.to_owned(),
        bootstrap: None,
    }
}

fn render_stdout(args: &RenderArgs) -> String {
    let mut out = Vec::new();
    run(args, &mut out).unwrap_or_else(|e| panic!("render failed: {e}"));
    String::from_utf8(out).unwrap()
}

fn check_snapshot(name: &str, actual: &str) {
    let path = manifest(&format!("tests/snapshots/{name}"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no snapshot {} ({e}); create it with UPDATE_SNAPSHOTS=1", path.display()));
    if expected != actual {
        let line = expected.lines().zip(actual.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "{name} differs from its snapshot from line {} on:\n  expected: {:?}\n  actual:   {:?}\nIf the change is intended, rerun with UPDATE_SNAPSHOTS=1 and review the diff.",
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line)
        );
    }
}

#[test]
fn snapshot_payment_verify_example_with_endpoints() {
    let out = render_stdout(&args(
        "../examples/channelcontract-payment-verify.yaml",
        Some("tests/fixtures/payment-verify-endpoints.yaml"),
    ));
    check_snapshot("payment-verify.yaml", &out);
}

#[test]
fn snapshot_minimal_contract_without_endpoints() {
    let out = render_stdout(&args("tests/fixtures/minimal-contract.yaml", None));
    assert!(out.contains("csp~default~hello~primary"), "the namespace defaults to `default`");
    check_snapshot("minimal.yaml", &out);
}

#[test]
fn rendering_twice_gives_identical_bytes() {
    let a =
        args("../examples/channelcontract-payment-verify.yaml", Some("tests/fixtures/payment-verify-endpoints.yaml"));
    let first = render_stdout(&a);
    let second = render_stdout(&a);
    assert_eq!(first, second);
    assert!(first.starts_with("# configVersion: sha256:"));
}

fn example_and_endpoints() -> (String, ChannelEndpoints) {
    let contract = std::fs::read_to_string(manifest("../examples/channelcontract-payment-verify.yaml")).unwrap();
    let endpoints = yaml_serde::from_str(
        &std::fs::read_to_string(manifest("tests/fixtures/payment-verify-endpoints.yaml")).unwrap(),
    )
    .unwrap();
    (contract, endpoints)
}

fn translate(contract_text: &str, endpoints: &ChannelEndpoints) -> operator::EnvoyResources {
    let contract = operator::render::parse_contract("example", contract_text).unwrap();
    operator::desired(&contract, endpoints, &ProxyOptions::default()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    /// The order in which endpoints arrive (watch events, EndpointSlices) never shows in the output.
    #[test]
    fn reordered_endpoints_give_identical_output(seed in any::<u64>()) {
        let (contract, endpoints) = example_and_endpoints();
        let baseline = translate(&contract, &endpoints);
        let mut shuffled = endpoints.clone();
        for (i, list) in shuffled.channels.values_mut().enumerate() {
            // A deterministic permutation per case: rotate and maybe reverse.
            let n = list.len().max(1);
            list.rotate_left(((seed >> (i * 8)) as usize) % n);
            if (seed >> (40 + i)) & 1 == 1 {
                list.reverse();
            }
        }
        let reordered = translate(&contract, &shuffled);
        prop_assert_eq!(&reordered.files, &baseline.files);
        prop_assert_eq!(&reordered.config_version, &baseline.config_version);
        prop_assert_eq!(&reordered.clusters, &baseline.clusters);
    }
}

#[test]
fn the_endpoints_change_the_version_and_readiness_alone_too() {
    let (contract, endpoints) = example_and_endpoints();
    let baseline = translate(&contract, &endpoints);
    let mut fewer = endpoints.clone();
    if let Some(e) = fewer.channels.get_mut("cache").and_then(|l| l.first_mut()) {
        e.ready = false;
    }
    assert_ne!(translate(&contract, &fewer).config_version, baseline.config_version);
    assert_eq!(translate(&contract, &endpoints).config_version, baseline.config_version);
}

#[test]
fn out_dir_gets_the_files_and_the_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args("tests/fixtures/minimal-contract.yaml", None);
    a.out_dir = Some(dir.path().join("csp"));
    a.bootstrap = Some("127.0.0.1:9901".parse().unwrap());
    let out = render_stdout(&a);
    for file in ["cds.yaml", "lds.yaml", "rds.yaml", "envoy.yaml"] {
        assert!(dir.path().join("csp").join(file).is_file(), "{file} missing");
        assert!(out.contains(file), "{out}");
    }
    assert!(out.contains("configVersion: sha256:"), "{out}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("csp"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn operator_bin(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_operator"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("CSP_RENDER_ENDPOINTS")
        .env_remove("CSP_RENDER_OUT_DIR")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn binary_renders_a_valid_contract() {
    let (ok, stdout, stderr) = operator_bin(&["render", "-f", "../examples/channelcontract-payment-verify.yaml"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("# cds.yaml") && stdout.contains("# rds.yaml") && stdout.contains("# lds.yaml"));
}

#[test]
fn binary_lists_every_broken_rule_of_an_invalid_contract_and_fails() {
    let (ok, stdout, stderr) = operator_bin(&["render", "-f", "tests/fixtures/invalid-contract.yaml"]);
    assert!(!ok, "an invalid contract must fail");
    assert!(stdout.is_empty(), "nothing is rendered: {stdout}");
    assert!(stderr.contains("ChannelContract payments/broken is invalid"), "{stderr}");
    for field in ["spec.retry.perTryTimeout", "spec.circuitBreaker.threshold", "spec.channels"] {
        assert!(stderr.contains(&format!("\n  - {field}: ")), "{field} not named in:\n{stderr}");
    }
}

#[test]
fn binary_refuses_what_is_not_a_contract() {
    let (ok, _, stderr) = operator_bin(&["render", "-f", "../examples/contractpolicy-national-baseline.yaml"]);
    assert!(!ok);
    assert!(stderr.contains("is not a ChannelContract") && stderr.contains("ContractPolicy"), "{stderr}");

    let (ok, _, stderr) = operator_bin(&["render", "-f", "tests/fixtures/no-such-file.yaml"]);
    assert!(!ok);
    assert!(stderr.contains("cannot read") && stderr.contains("no-such-file.yaml"), "{stderr}");

    let (ok, _, stderr) = operator_bin(&[
        "render",
        "-f",
        "../examples/channelcontract-payment-verify.yaml",
        "--endpoints",
        "tests/fixtures/minimal-contract.yaml",
    ]);
    assert!(!ok);
    assert!(stderr.contains("is not an endpoints file"), "{stderr}");
}
