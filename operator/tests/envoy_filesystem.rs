//! The ConfigMap's filesystem-xDS layout works for real: `operator render --out-dir` writes the files, a
//! real Envoy started on a bootstrap with `path_config_source` for CDS and LDS (and RDS, named by the
//! listener) loads them, serves traffic with them, follows a re-render, and fails over region by region and
//! channel by channel when backends fail.
#![allow(clippy::unwrap_used)]

mod real_envoy;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use operator::render::{RenderArgs, run};
use real_envoy::{Backend, RunningEnvoy, free_port, get, wait_for};

const CONTRACT: &str = "../examples/channelcontract-payment-verify.yaml";
const PRIMARY: &str = "csp~payments~payment-verify~primary";

fn render(config_dir: &Path, endpoints_yaml: &str, listen: SocketAddr, admin: SocketAddr) -> String {
    let endpoints = config_dir.with_file_name("endpoints.yaml");
    std::fs::write(&endpoints, endpoints_yaml).unwrap();
    let args = RenderArgs {
        file: Path::new(env!("CARGO_MANIFEST_DIR")).join(CONTRACT),
        endpoints: Some(endpoints),
        out_dir: Some(config_dir.to_owned()),
        listen: Some(listen),
        config_dir: config_dir.display().to_string(),
        bootstrap: Some(admin),
    };
    let mut out = Vec::new();
    run(&args, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    out.lines().find_map(|l| l.strip_prefix("configVersion: ")).unwrap().to_owned()
}

fn endpoints_yaml(primary: &[(&Backend, &str)], cache: &Backend, fallback: &Backend) -> String {
    let entry = |b: &Backend, region: Option<&str>| {
        let region = region.map(|r| format!(", region: {r}")).unwrap_or_default();
        format!("  - {{address: {}, port: {}{region}}}\n", b.addr.ip(), b.addr.port())
    };
    let mut yaml = String::from("channels:\n  primary:\n");
    for (b, region) in primary {
        yaml += &entry(b, Some(region));
    }
    yaml += "  cache:\n";
    yaml += &entry(cache, Some("gz"));
    yaml += "  static:\n";
    yaml += &entry(fallback, None);
    yaml
}

/// The body of a request through the proxy, once it answers 200.
fn served_by(envoy: &mut RunningEnvoy, listen: SocketAddr, headers: &[(&str, &str)]) -> Option<String> {
    envoy.assert_running();
    let response = get(listen, "/verify", headers).ok()?;
    (response.status == 200).then_some(response.body)
}

/// Sends requests until `expected` serves one, then checks that the next ones all go there too.
fn traffic_settles_on(envoy: &mut RunningEnvoy, listen: SocketAddr, expected: &str) {
    wait_for(&format!("traffic to move to {expected}"), Duration::from_secs(20), || {
        (served_by(envoy, listen, &[]).as_deref() == Some(expected)).then_some(())
    });
    for _ in 0..20 {
        let response = get(listen, "/verify", &[]).unwrap();
        assert_eq!((response.status, response.body.as_str()), (200, expected), "traffic did not stay on {expected}");
    }
}

fn admin_get(admin: SocketAddr, path: &str) -> Option<String> {
    get(admin, path, &[]).ok().filter(|r| r.status == 200).map(|r| r.body)
}

#[test]
fn envoy_loads_the_files_serves_and_fails_over_with_real_traffic() {
    let gz = Backend::start("127.0.0.2", "primary-gz", 200);
    let sz = Backend::start("127.0.0.3", "primary-sz", 200);
    let cache = Backend::start("127.0.0.4", "cache", 200);
    let fallback = Backend::start("127.0.0.5", "static", 200);

    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("csp");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let version = render(&config_dir, &endpoints_yaml(&[(&gz, "gz"), (&sz, "sz")], &cache, &fallback), listen, admin);

    let mut envoy = RunningEnvoy::start(&config_dir.join("envoy.yaml"), &dir.path().join("envoy.log"));

    // Envoy loaded the clusters from cds.yaml, at the rendered version.
    let clusters = wait_for("the clusters in /clusters", Duration::from_secs(20), || {
        envoy.assert_running();
        admin_get(admin, "/clusters").filter(|c| c.contains(&format!("{PRIMARY}::{}", gz.addr)))
    });
    for name in ["primary", "cache", "static"] {
        assert!(clusters.contains(&format!("csp~payments~payment-verify~{name}::")), "{name} missing:\n{clusters}");
    }
    let dump = admin_get(admin, "/config_dump").unwrap();
    assert!(dump.contains(&format!("\"version_info\": \"{version}\"")), "config_dump lacks {version}");
    assert!(dump.contains("\"name\": \"csp~payments~payment-verify\""), "no listener/route config in config_dump");

    // The listener (lds.yaml) serves with the routes of rds.yaml.
    let body = wait_for("the listener to serve", Duration::from_secs(20), || served_by(&mut envoy, listen, &[]));
    assert_eq!(body, "primary-gz", "the primary's first region serves first");
    let response = get(listen, "/verify", &[]).unwrap();
    assert_eq!(response.header("x-csp-contract"), Some("payments/payment-verify"));
    for (selector, backend) in [("cache", "cache"), ("static", "static"), ("CACHE", "cache")] {
        assert_eq!(served_by(&mut envoy, listen, &[("x-channel-priority", selector)]).as_deref(), Some(backend));
    }

    // gz fails: its endpoint is ejected and the primary's next region takes the traffic.
    gz.set_status(503);
    traffic_settles_on(&mut envoy, listen, "primary-sz");
    let clusters = admin_get(admin, "/clusters").unwrap();
    assert!(
        clusters.contains(&format!("{PRIMARY}::{}::health_flags::/failed_outlier_check", gz.addr)),
        "gz is not marked ejected:\n{clusters}"
    );

    // sz fails too: no region of the primary is left, the next channel takes the traffic.
    sz.set_status(503);
    traffic_settles_on(&mut envoy, listen, "cache");

    // A re-render (as when the ConfigMap changes) is followed: a new healthy primary endpoint in gz.
    let gz2 = Backend::start("127.0.0.6", "primary-gz2", 200);
    let new_version =
        render(&config_dir, &endpoints_yaml(&[(&gz2, "gz"), (&sz, "sz")], &cache, &fallback), listen, admin);
    assert_ne!(new_version, version);
    traffic_settles_on(&mut envoy, listen, "primary-gz2");
    let dump = admin_get(admin, "/config_dump").unwrap();
    assert!(dump.contains(&format!("\"version_info\": \"{new_version}\"")), "config_dump lacks {new_version}");
    drop(envoy);
}
