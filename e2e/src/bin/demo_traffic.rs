//! The traffic part of `make demo`: "pods" for a contract's channels (backends in a network namespace of
//! the demo's own, on 10.77.0.x), their EndpointSlices and regional Nodes, and a real Envoy that follows
//! the contract's ConfigMap as a mounted volume. It sends requests, makes the primary channel fail, shows
//! the fallback channel serving, then keeps everything running until SIGTERM/Ctrl-C.
//!
//! ```text
//! demo-traffic --namespace payments --contract payment-verify --mount /path/given/to/operator/--proxy-config-dir
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use e2e::backend::Backend;
use e2e::configmap_volume::ConfigMapVolume;
use e2e::netns::NetworkNamespace;
use e2e::proxy::Envoy;
use e2e::{kubectl, product_bin, repo_root, wait_until};

#[derive(Debug, Parser)]
#[command(name = "demo-traffic", about = "Backends, EndpointSlices, Nodes and a real Envoy for `make demo`")]
struct Args {
    /// The contract's namespace.
    #[arg(long, default_value = "payments")]
    namespace: String,
    /// The contract.
    #[arg(long, default_value = "payment-verify")]
    contract: String,
    /// Where Envoy mounts the ConfigMap (the operator's --proxy-config-dir).
    #[arg(long)]
    mount: PathBuf,
    /// Envoy's admin port (inside the network namespace, on 127.0.0.1).
    #[arg(long, default_value_t = 19000)]
    admin_port: u16,
}

/// The pods' port: not the Services' 8080, which Envoy's listener takes in the same network namespace.
const POD_PORT: u16 = 9080;

/// (channel Service, backend name, region, host)
const PODS: [(&str, &str, &str, u8); 5] = [
    ("payment-verify", "gz-1", "gz", 11),
    ("payment-verify", "sz-1", "sz", 12),
    ("payment-verify", "hz-1", "hz", 13),
    ("verify-cache", "cache-1", "gz", 21),
    ("verify-static", "static-1", "sz", 31),
];

fn say(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

fn request(netns: &NetworkNamespace, n: usize, header: Option<&str>) -> Vec<String> {
    let url = format!("http://{}:8080/", NetworkNamespace::address(1));
    let mut args: Vec<String> =
        vec!["-sS".into(), "--max-time".into(), "5".into(), "-w".into(), "%{http_code} %header{x-backend}\\n".into()];
    if let Some(h) = header {
        args.extend(["-H".into(), h.to_owned()]);
    }
    for _ in 0..n {
        args.extend([url.clone(), "-o".into(), "/dev/null".into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    netns.run("curl", &args).stdout.lines().map(str::to_owned).collect()
}

fn tally(replies: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in replies {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    counts.iter().map(|(k, v)| format!("{v} x [{k}]")).collect::<Vec<_>>().join(", ")
}

fn main() {
    let args = Args::parse();
    let dir = repo_root().join("e2e/.run/demo/traffic");
    std::fs::create_dir_all(&dir).expect("demo folder");
    std::fs::create_dir_all(&args.mount).expect("mount point");

    say("Pods: backends in a network namespace of the demo's own (10.77.0.x), Nodes per region, EndpointSlices");
    let netns = NetworkNamespace::create();
    println!("network namespace {}", netns.name);
    let binary = product_bin("backend");
    let mut backends = Vec::new();
    for (service, name, region, host) in PODS {
        let node = format!("csp-demo-{region}");
        let node_yaml = format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n  labels:\n    {}: {region}\n",
            crds::REGION_LABEL
        );
        kubectl(&["apply", "-f", "-"], Some(&node_yaml)).ok();
        let b = Backend::start_on(&binary, &netns, name, &NetworkNamespace::address(host), POD_PORT, &dir);
        let slice = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{name}\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints:\n- addresses: [{addr}]\n  conditions: {{ready: true}}\n  nodeName: {node}\n",
            ns = args.namespace,
            port = POD_PORT,
            addr = b.address,
        );
        kubectl(&["apply", "-f", "-"], Some(&slice)).ok();
        println!("{service}: pod {name} at {}:{POD_PORT} on node {node} (region {region})", b.address);
        backends.push(b);
    }

    let cm = format!("{}-envoy", args.contract);
    wait_until("the operator to publish the ConfigMap with all endpoints", Duration::from_secs(60), || {
        let r = kubectl(
            &["get", "chc", &args.contract, "-n", &args.namespace, "-o", "jsonpath={.status.channelSummary}"],
            None,
        );
        (r.success && r.stdout.contains("primary:3")).then_some(())
    });
    say("The contract is programmed: kubectl get chc");
    println!("{}", kubectl(&["get", "chc", "-n", &args.namespace], None).stdout);

    say("A real Envoy, following the ConfigMap as a mounted volume (filesystem xDS)");
    let volume_dir = dir.join("volume");
    let _ = std::fs::remove_dir_all(&volume_dir);
    std::fs::create_dir_all(&volume_dir).expect("volume");
    let volume = ConfigMapVolume::follow(&args.namespace, &cm, &volume_dir);
    let mut envoy = Envoy::start(&netns, &volume_dir, &args.mount, args.admin_port, &dir);
    wait_until("Envoy's listener to answer", Duration::from_secs(60), || {
        envoy.assert_running();
        request(&netns, 1, None).first().filter(|r| r.starts_with("200")).map(|_| ())
    });
    println!("envoy pid {:?}, admin on 127.0.0.1:{} inside {}", envoy.pid(), args.admin_port, netns.name);

    say("Requests go to the primary channel, gz first (the declared region order)");
    let replies = request(&netns, 10, None);
    println!("10 requests: {}", tally(&replies));

    say("X-Channel-Priority: cache goes straight to the cache channel");
    println!("5 requests: {}", tally(&request(&netns, 5, Some("X-Channel-Priority: cache"))));

    say("The primary's gz pod fails (503): it is ejected and traffic fails over to sz");
    backends[0].set_mode("status 503");
    wait_until("traffic to settle on sz", Duration::from_secs(30), || {
        request(&netns, 3, None).iter().all(|r| r == "200 sz-1").then_some(())
    });
    println!("10 requests: {}", tally(&request(&netns, 10, None)));

    say("Every primary pod fails: traffic degrades to the fallback channel (cache)");
    for b in &backends[..3] {
        b.set_mode("status 503");
    }
    wait_until("traffic to settle on the cache channel", Duration::from_secs(30), || {
        request(&netns, 3, None).iter().all(|r| r == "200 cache-1").then_some(())
    });
    println!("10 requests: {}", tally(&request(&netns, 10, None)));

    say("The primary recovers: once its ejection ends (baseEjectionTime), traffic returns to it");
    for b in &backends[..3] {
        b.set_mode("ok");
    }
    println!("(the example contract ejects for 30s; requests now: {})", tally(&request(&netns, 5, None)));

    say("DONE: everything keeps running");
    println!(
        "  ip netns exec {ns} curl -s -D- http://10.77.0.1:8080/             # a request through Envoy\n  \
         ip netns exec {ns} curl -s http://127.0.0.1:{admin}/clusters | head     # Envoy's view of the channels\n  \
         echo 'status 503' > {dir}/cache-1.mode                                  # make a pod fail\n  \
         make demo-down",
        ns = netns.name,
        admin = args.admin_port,
        dir = dir.display()
    );

    // Keep running until told to stop; then clean up (processes, Nodes, namespace).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    });
    drop(volume);
    let _ = envoy.process.stop();
    drop(backends);
    for region in ["gz", "sz", "hz"] {
        let _ = kubectl(&["delete", "node", &format!("csp-demo-{region}"), "--ignore-not-found"], None);
    }
    drop(netns);
}
