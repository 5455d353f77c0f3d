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
