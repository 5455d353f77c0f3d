//! The webhook's life as an operator of the platform sees it: certificates rotated while admissions go
//! on, a clean shutdown, and what the cluster does when the webhook is gone (fail closed, except where
//! it must never block).

use std::time::Duration;

use e2e::webhook::{AdmissionStream, WebhookFixture, create_policy, served_serial};
use e2e::{kubectl, unique, wait_until};

fn service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  annotations: {{csp.contracts.dev/failover-regions: \"gz,sz,hz\"}}\nspec:\n  ports: [{{port: 8080}}]\n  clusterIP: None\n"
    )
}

#[test]
fn certificates_rotate_while_admissions_continue_then_the_cluster_fails_closed_without_the_webhook() {
    let mut f = WebhookFixture::start("lifecycle");
    let ns = f.namespace("lifecycle", &[]);
    let _policy = create_policy(&unique("baseline"), "Deny", &[&ns.name], &["gz", "sz", "hz"], "");

    // A steady stream of admissions through the API server.
    let stream = AdmissionStream::start(&ns.name, service);

    let ca = webhook::certs::Pem {
        cert: std::fs::read_to_string(&f.ca_file).expect("ca"),
        key: std::fs::read_to_string(f.ca_file.with_file_name("ca.key")).expect("ca key"),
    };
    let before = served_serial(f.port);
    let mut serials = vec![before.clone()];
    for round in 0..2 {
        wait_until("admissions to flow", Duration::from_secs(30), || {
            (stream.admitted() >= 5 * (round + 1)).then_some(())
        });
        let previous = served_serial(f.port);
        let next =
            webhook::certs::serving_from_ca(&ca, "csp-e2e-webhook", &["127.0.0.1".into()], Duration::from_secs(86_400))
                .expect("reissue");
        // Written as a file tool would: one file, then the other (the webhook must not serve a half pair).
        std::fs::write(&f.cert_file, &next.cert).expect("cert");
        std::fs::write(&f.key_file, &next.key).expect("key");
        let now = wait_until("the new certificate to be served", Duration::from_secs(20), || {
            let now = served_serial(f.port);
            (now != previous).then_some(now)
        });
        serials.push(now);
    }
    let after = served_serial(f.port);
    wait_until("more admissions after the last rotation", Duration::from_secs(30), || {
        (stream.admitted() >= 15).then_some(())
    });
    let failures = stream.stop();
    assert_ne!(before, after, "the served certificate should have changed");
    serials.dedup();
    assert_eq!(serials.len(), 3, "two rotations should serve three certificates in turn: {serials:?}");
    assert!(failures.is_empty(), "admissions failed during rotation: {failures:?}");
    assert!(f.process.log_tail().contains("serving certificate reloaded"), "{}", f.process.log_tail());

    // A clean shutdown: SIGTERM drains and exits 0.
    let status = f.process.stop().expect("exit status");
    assert!(status.success(), "the webhook should exit 0 on SIGTERM, got {status:?}:\n{}", f.process.log_tail());
    assert!(f.process.log_tail().contains("stopped"));

    // Without the webhook: creates in matched namespaces fail closed …
    let err = kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&service("while-down"))).failed();
    assert!(err.contains("failed calling webhook"), "{err}");
    // … while kube-system still works.
    let name = unique("still-works");
    kubectl(&["create", "-n", "kube-system", "-f", "-"], Some(&service(&name))).ok();
    kubectl(&["delete", "service", &name, "-n", "kube-system"], None).ok();
    // And deleting (the namespace at the end) is not blocked by a missing webhook for DELETE? It is:
    // failurePolicy Fail covers DELETE too, so unregister before cleaning up.
    f.unregister();
}

#[test]
fn many_concurrent_maximum_size_reviews_are_answered_within_the_charts_memory_limit() {
    let f = WebhookFixture::start("memory");
    // The chart's memory limit for the webhook container.
    let values =
        std::fs::read_to_string(e2e::repo_root().join("charts/channel-contracts/values.yaml")).expect("values");
    let values: serde_json::Value = yaml_serde::from_str(&values).expect("values.yaml");
    let limit = values["webhook"]["resources"]["limits"]["memory"].as_str().expect("a memory limit").to_owned();
    let limit_bytes: u64 = limit.strip_suffix("Mi").and_then(|m| m.parse().ok()).map(|m: u64| m << 20).expect("NNMi");

    // The worst body for memory: as close to the 4 MiB limit as fits, an object and an old object made of
    // many small labels (the most to allocate per byte when read).
    let labels = |n: usize| -> serde_json::Map<String, serde_json::Value> {
        (0..n).map(|i| (format!("l{i}"), serde_json::Value::from("v"))).collect()
    };
    let object = |n| serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "big", "namespace": "team", "labels": labels(n)}, "spec": {"ports": [{"port": 80}]}});
    let body = |n| {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Service"},
                "resource": {"group": "", "version": "v1", "resource": "services"},
                "name": "big", "namespace": "team", "operation": "UPDATE", "userInfo": {},
                "object": object(n), "oldObject": object(n)}
        })
        .to_string()
    };
    let mut n = 100_000;
    while body(n).len() < 4 * 1024 * 1024 - 64 * 1024 {
        n += 10_000;
    }
    while body(n).len() > 4 * 1024 * 1024 - 1024 {
        n -= 1_000;
    }
    let dir = e2e::run_dir("memory");
    let file = dir.join("review.json");
    std::fs::write(&file, body(n)).expect("write the body");
    let data = format!("@{}", file.display());
    let (ca, url) = (f.ca_file.to_string_lossy().into_owned(), f.url("/validate"));
    let before = f.process.peak_rss().unwrap_or_default();
    // One POST as the API server sends it (no `Expect: 100-continue`, which Go's client does not send):
    // the HTTP status (0: no answer) and what curl said when there was none.
    let post = |ca: &str, url: &str, data: &str| -> (u16, String) {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--http1.1", "--max-time", "120", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca])
            .args(["-X", "POST", "-H", "Content-Type: application/json", "-H", "Expect:", "--data-binary", data, url]);
        let out = e2e::run(cmd, None);
        (out.stdout.trim().parse().unwrap_or(0), out.stderr)
    };
    let threads: Vec<_> = (0..24)
        .map(|_| {
            let (ca, url, data) = (ca.clone(), url.clone(), data.clone());
            std::thread::spawn(move || (0..3).map(|_| post(&ca, &url, &data)).collect::<Vec<_>>())
        })
        .collect();
    let answers: Vec<(u16, String)> = threads.into_iter().flat_map(|t| t.join().expect("a client thread")).collect();
    let codes: Vec<u16> = answers.iter().map(|(c, _)| *c).collect();
    let errors: Vec<&str> = answers.iter().filter(|(c, _)| *c == 0).map(|(_, e)| e.as_str()).collect();
    assert!(errors.is_empty(), "requests got no answer: {errors:?}");
    let answered = codes.iter().filter(|c| **c == 200).count();
    let refused = codes.iter().filter(|c| **c == 429).count();
    assert!(codes.iter().all(|c| [200, 413, 429].contains(c)), "every answer is 200, 413 or 429: {codes:?}");
    assert!(answered > 0, "some reviews are answered: {codes:?}");
    let ready_url = f.url("/readyz");
    let mut process = f.process;
    assert!(process.running(), "the webhook died:\n{}", process.log_tail());
    let peak = process.peak_rss().expect("the webhook's VmHWM");
    eprintln!(
        "{} reviews of {} bytes: {answered} answered, {refused} refused (429); peak RSS {:.1} MiB ({:.1} MiB before) of the chart's {limit}",
        codes.len(),
        body(n).len(),
        peak as f64 / 1048576.0,
        before as f64 / 1048576.0
    );
    assert!(peak < limit_bytes, "peak RSS {peak} bytes is over the chart's limit {limit}");
    assert_eq!(e2e::curl(&["--cacert", &ca, &ready_url]).0, 200, "still serving afterwards");
}
