//! The traffic part of `make demo`: "pods" for a contract's channels (backends in a network namespace of
//! the demo's own, on 10.77.0.x), their EndpointSlices and regional Nodes, and a gateway fleet of three
//! real Envoys, one per region, fed over xDS (TLS) by the operator. It shows each proxy sending traffic to
//! its own region first, makes the primary channel fail, shows the fallback channel serving, then keeps
//! everything running until SIGTERM/Ctrl-C.
//!
//! ```text
//! demo-traffic certs --dir DIR        # the xDS server's CA and certificate, for the operator
//! demo-traffic run --namespace payments --contract payment-verify --xds-port PORT --xds-ca DIR/ca.crt
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use e2e::backend::Backend;
use e2e::netns::NetworkNamespace;
use e2e::xds::{AdsEnvoy, HostLink, ProxySpec};
use e2e::{kubectl, product_bin, repo_root, wait_until};

#[derive(Debug, Parser)]
#[command(
    name = "demo-traffic",
    about = "Backends, EndpointSlices, Nodes and a gateway fleet of Envoys for `make demo`"
)]
enum Command {
    /// Writes a CA and the xDS server's certificate (for the name the proxies check) into a folder.
    Certs {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Runs the pods and the proxies.
    Run(Args),
}

#[derive(Debug, clap::Args)]
struct Args {
    #[arg(long, default_value = "payments")]
    namespace: String,
    #[arg(long, default_value = "payment-verify")]
    contract: String,
    /// The operator's xDS port (on the host).
    #[arg(long)]
    xds_port: u16,
    /// The CA of the xDS server's certificate.
    #[arg(long)]
    xds_ca: PathBuf,
}

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

/// The gateway fleet: a proxy per region, its listeners on 10.77.0.<host>, its admin port.
const PROXIES: [(&str, &str, u8, u16); 3] =
    [("proxy-gz", "gz", 2, 19001), ("proxy-sz", "sz", 3, 19002), ("proxy-hz", "hz", 4, 19003)];

fn request(netns: &NetworkNamespace, host: u8, authority: &str, n: usize, header: Option<&str>) -> Vec<String> {
    let url = format!("http://{}:8080/", NetworkNamespace::address(host));
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "5".into(),
        "-H".into(),
        format!("Host: {authority}"),
        "-w".into(),
        "%{http_code} %header{x-backend}\\n".into(),
    ];
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
    let args = match Command::parse() {
        Command::Certs { dir } => {
            std::fs::create_dir_all(&dir).expect("the certificates' folder");
            let certs = e2e::xds::write_certs(&dir);
            println!("wrote {}, {}, {}", certs.ca.display(), certs.cert.display(), certs.key.display());
            return;
        }
        Command::Run(args) => args,
    };
    let dir = repo_root().join("e2e/.run/demo/traffic");
    std::fs::create_dir_all(&dir).expect("demo folder");

    say("Pods: backends in a network namespace of the demo's own (10.77.0.x), Nodes per region, EndpointSlices");
    let netns = NetworkNamespace::create();
    let link = HostLink::new(&netns);
    println!("network namespace {} (joined to the host: the operator's xDS server at {})", netns.name, link.host);
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
    wait_until("the operator to program the contract with all endpoints", Duration::from_secs(60), || {
        let r = kubectl(
            &["get", "chc", &args.contract, "-n", &args.namespace, "-o", "jsonpath={.status.channelSummary}"],
            None,
        );
        (r.success && r.stdout.contains("primary:3")).then_some(())
    });

    say("A gateway fleet: three real Envoys, one per region, fed over xDS (delta ADS, TLS) by the operator");
    let mut proxies = Vec::new();
    for (name, region, host, admin_port) in PROXIES {
        let mut spec = ProxySpec::new(name, region, host, admin_port);
        if region == "hz" {
            // hz's bootstrap gives no region: the operator reads the region of its Pod's Node.
            spec.region = None;
            let pod = format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {}}}\nspec:\n  nodeName: csp-demo-hz\n  containers: [{{name: envoy, image: envoyproxy/envoy:v1.40.0}}]\n",
                args.namespace
            );
            kubectl(&["apply", "-f", "-"], Some(&pod)).ok();
        }
        let bootstrap = AdsEnvoy::bootstrap(&spec, &args.namespace, &link.host, args.xds_port, &args.xds_ca);
        println!(
            "{name}: region {}, listeners on {}, admin 127.0.0.1:{admin_port}",
            spec.region.as_deref().unwrap_or("(from its Pod's Node)"),
            NetworkNamespace::address(host)
        );
        proxies.push(AdsEnvoy::start(&netns, &dir, spec, &bootstrap));
    }
    let authority = format!("{}.{}:8080", args.contract, args.namespace);
    wait_until("every proxy to acknowledge the contract", Duration::from_secs(60), || {
        let r = kubectl(
            &["get", "chc", &args.contract, "-n", &args.namespace, "-o", "jsonpath={.status.proxies.summary}"],
            None,
        );
        (r.success && r.stdout.starts_with("3/3 acked")).then_some(())
    });
    say("kubectl get chc: every proxy acknowledged (ACK) the contract's configuration");
    println!("{}", kubectl(&["get", "chc", "-n", &args.namespace], None).stdout);
    println!(
        "status.proxies: {}",
        kubectl(&["get", "chc", &args.contract, "-n", &args.namespace, "-o", "jsonpath={.status.proxies}"], None)
            .stdout
    );

    say(&format!("Each proxy sends {authority} to its own region first"));
    for (name, _, host, _) in PROXIES {
        wait_until(&format!("{name} to serve"), Duration::from_secs(30), || {
            request(&netns, host, &authority, 1, None).first().filter(|r| r.starts_with("200")).map(|_| ())
        });
        println!("{name}: 10 requests: {}", tally(&request(&netns, host, &authority, 10, None)));
    }

    say("X-Channel-Priority: cache goes straight to the cache channel");
    println!("proxy-gz: 5 requests: {}", tally(&request(&netns, 2, &authority, 5, Some("X-Channel-Priority: cache"))));

    say("The primary's gz pod fails (503): it is ejected and proxy-gz fails over to sz (the declared order)");
    backends[0].set_mode("status 503");
    wait_until("traffic to settle on sz", Duration::from_secs(30), || {
        request(&netns, 2, &authority, 3, None).iter().all(|r| r == "200 sz-1").then_some(())
    });
    println!("proxy-gz: 10 requests: {}", tally(&request(&netns, 2, &authority, 10, None)));
    println!(
        "proxy-hz (its own region hz is healthy): 10 requests: {}",
        tally(&request(&netns, 4, &authority, 10, None))
    );

    say("Every primary pod fails: traffic degrades to the fallback channel (cache)");
    for b in &backends[..3] {
        b.set_mode("status 503");
    }
    wait_until("traffic to settle on the cache channel", Duration::from_secs(30), || {
        request(&netns, 2, &authority, 3, None).iter().all(|r| r == "200 cache-1").then_some(())
    });
    println!("proxy-gz: 10 requests: {}", tally(&request(&netns, 2, &authority, 10, None)));

    say("The primary recovers: once its ejection ends (baseEjectionTime), traffic returns to it");
    for b in &backends[..3] {
        b.set_mode("ok");
    }
    println!(
        "(the example contract ejects for 30s; requests now: {})",
        tally(&request(&netns, 2, &authority, 5, None))
    );

    say("DONE: everything keeps running");
    println!(
        "  ip netns exec {ns} curl -s -D- -H 'Host: {authority}' http://10.77.0.2:8080/   # a request through proxy-gz\n  \
         ip netns exec {ns} curl -s http://127.0.0.1:19001/clusters | head     # proxy-gz's view of the channels\n  \
         echo 'status 503' > {dir}/cache-1.mode                                  # make a pod fail\n  \
         make demo-down",
        ns = netns.name,
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
    for mut p in proxies {
        let _ = p.process.stop();
    }
    drop(backends);
    for region in ["gz", "sz", "hz"] {
        let _ = kubectl(&["delete", "node", &format!("csp-demo-{region}"), "--ignore-not-found"], None);
    }
    drop(link);
    drop(netns);
}
