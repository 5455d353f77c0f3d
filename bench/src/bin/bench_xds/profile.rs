//! `bench_xds profile`: the xDS server's own work, in process, without gRPC or an API server.
//!
//! The operator's [`Xds`] gets N contracts (those of `operator/benches/fixtures`, as the reconciler
//! publishes them); S sessions (delta, as the server runs one per stream) connect, each in a view of
//! its own region and listen address as the proxies of `bench_xds run` are (the first `--own-views`
//! with a listen address of their own, as the real Envoys; the others 0.0.0.0, one view per region), and
//! take the whole configuration, acknowledging every response as a proxy does (and subscribing to the
//! route configurations the scopes name). Then one contract at a time is edited, and every session
//! takes the new version and acknowledges it.
//!
//! Each step of the server is timed on its own, summed over the sessions: the snapshot of a view
//! ([`Xds::snapshot`]), the responses of a session ([`Session::respond`]), encoding them as gRPC would
//! (prost), reading a proxy's answer ([`Session::request`]) and applying it ([`Xds::apply`]); and the
//! process's resident memory before and after the sessions connect. One thread: the figures are CPU time.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use channel_contracts_bench::fixtures;
use channel_contracts_bench::load::typed;
use channel_contracts_bench::process::status_mib;
use channel_contracts_bench::stats::{Stats, stats};
use crds::ChannelContract;
use operator::envoy::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use operator::model::ContractKey;
use operator::publish::xds::fleet::ProxyIdentity;
use operator::publish::xds::metrics::XdsMetrics;
use operator::publish::xds::session::{Request, Response, Session};
use operator::publish::xds::snapshot::Kind;
use operator::publish::xds::{Xds, view_of};
use prost::Message;
use serde_json::{Value, json};

use super::log;

/// Arguments of `profile`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProfileArgs {
    /// Contracts served.
    #[arg(long, default_value_t = 5000)]
    pub contracts: usize,
    /// The contracts are spread over this many namespaces.
    #[arg(long, default_value_t = 10)]
    pub namespaces: usize,
    /// Sessions (proxies).
    #[arg(long, default_value_t = 1010)]
    pub sessions: usize,
    /// Of those, how many have a listen address (hence a view) of their own.
    #[arg(long, default_value_t = 10)]
    pub own_views: usize,
    /// Edits, one contract at a time.
    #[arg(long, default_value_t = 10)]
    pub edits: usize,
    /// Where to write the results (JSON).
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
}

/// Time spent per step of the server.
#[derive(Debug, Default, Clone, Copy)]
struct Steps {
    snapshot: Duration,
    respond: Duration,
    encode: Duration,
    request: Duration,
    apply: Duration,
    responses: usize,
    resources: usize,
    bytes: usize,
}

impl Steps {
    fn total(&self) -> Duration {
        self.snapshot + self.respond + self.encode + self.request + self.apply
    }

    fn json(&self) -> Value {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        json!({
            "total_ms": ms(self.total()), "snapshot_ms": ms(self.snapshot), "respond_ms": ms(self.respond),
            "encode_ms": ms(self.encode), "request_ms": ms(self.request), "apply_ms": ms(self.apply),
            "responses": self.responses, "resources": self.resources, "bytes": self.bytes,
        })
    }
}

struct Proxy {
    stream: u64,
    session: Session,
    view: operator::publish::xds::snapshot::View,
    routes: HashSet<String>,
}

fn now() -> String {
    "2026-01-01T00:00:00Z".to_owned()
}

fn key(i: usize, namespaces: usize) -> ContractKey {
    ContractKey { namespace: format!("bench-{:02}", i % namespaces), name: fixtures::contract_name(i) }
}

fn contract(i: usize, namespaces: usize, max_latency_ms: usize) -> Result<ChannelContract> {
    let k = key(i, namespaces);
    let mut object = fixtures::contract_object(i, &k.namespace);
    object["spec"]["sla"]["maxLatency"] = json!(format!("{max_latency_ms}ms"));
    typed(object)
}

/// The route configurations a scope response names (as a proxy reads them).
fn scoped_routes(response: &DeltaDiscoveryResponse) -> Vec<String> {
    use operator::envoy::pb::envoy::config::route::v3::ScopedRouteConfiguration;
    response
        .resources
        .iter()
        .filter_map(|r| ScopedRouteConfiguration::decode(r.resource.as_ref()?.value.as_slice()).ok())
        .map(|s| s.route_configuration_name)
        .collect()
}

/// Until the session has nothing more to send: snapshot, respond, encode, and the proxy's answers.
fn exchange(xds: &Xds, proxy: &mut Proxy, steps: &mut Steps) -> Result<()> {
    for _round in 0..16 {
        let t = Instant::now();
        let snapshot = xds.snapshot(&proxy.view);
        steps.snapshot += t.elapsed();
        let t = Instant::now();
        let responses = proxy.session.respond(&snapshot);
        steps.respond += t.elapsed();
        if responses.is_empty() {
            return Ok(());
        }
        for response in responses {
            let Response::Delta(response) = response else { bail!("a state-of-the-world response on a delta stream") };
            let t = Instant::now();
            let encoded = response.encode_to_vec();
            steps.encode += t.elapsed();
            steps.responses += 1;
            steps.resources += response.resources.len();
            steps.bytes += encoded.len();
            let mut answers = Vec::new();
            if response.type_url == Kind::Scope.type_url() {
                let new: Vec<String> =
                    scoped_routes(&response).into_iter().filter(|r| proxy.routes.insert(r.clone())).collect();
                if !new.is_empty() {
                    answers.push(Request { type_url: Kind::Route.type_url(), subscribe: new, ..Request::default() });
                }
            }
            answers.push(Request {
                type_url: response.type_url.clone(),
                nonce: response.nonce.clone(),
                ..Request::default()
            });
            for answer in answers {
                let t = Instant::now();
                let events = proxy.session.request(answer);
                steps.request += t.elapsed();
                let t = Instant::now();
                xds.apply(proxy.stream, events, &now());
                steps.apply += t.elapsed();
            }
        }
    }
    bail!("a session kept sending after 16 rounds")
}

fn rss() -> f64 {
    status_mib(std::process::id(), "VmRSS:").unwrap_or(f64::NAN)
}

/// Runs the profile; returns its JSON and prints a summary.
pub fn profile(args: &ProfileArgs) -> Result<Value> {
    let xds = Xds::new(XdsMetrics::default());
    let rss_empty = rss();
    let t = Instant::now();
    for i in 0..args.contracts {
        let c = contract(i, args.namespaces, fixtures::max_latency_ms(i))?;
        let endpoints: operator::ChannelEndpoints = typed(fixtures::channel_endpoints(i))?;
        xds.publish(key(i, args.namespaces), format!("v1-{i}"), Arc::new(c), endpoints);
    }
    let publish = t.elapsed();
    let rss_catalog = rss();
    log(format!(
        "published {} contracts in {:.0} ms; RSS {rss_catalog:.1} MiB",
        args.contracts,
        publish.as_secs_f64() * 1e3
    ));

    let mut proxies = Vec::with_capacity(args.sessions);
    let mut initial = Steps::default();
    let mut first_per_view = Vec::new();
    let mut per_session = Vec::new();
    let t_all = Instant::now();
    for s in 0..args.sessions {
        let region = fixtures::REGIONS[s % fixtures::REGIONS.len()];
        let listen = if s < args.own_views {
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + u8::try_from(s).context("at most 200 own views")?))
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let identity = ProxyIdentity {
            id: format!("proxy-{s:04}"),
            fleet: "csp-gateway".into(),
            region: Some(region.into()),
            namespaces: None,
            drills: false,
            tracing: None,
        };
        let view = view_of(&identity, listen);
        let stream = xds.next_stream();
        xds.connect(stream, identity);
        let mut proxy = Proxy { stream, session: Session::new(stream, true), view, routes: HashSet::new() };
        let mut steps = Steps::default();
        for kind in [Kind::Cluster, Kind::Listener, Kind::Scope] {
            let t = Instant::now();
            let events = proxy.session.request(Request { type_url: kind.type_url(), ..Request::default() });
            steps.request += t.elapsed();
            xds.apply(stream, events, &now());
        }
        exchange(&xds, &mut proxy, &mut steps)?;
        let ms = steps.total().as_secs_f64() * 1e3;
        if s < args.own_views + fixtures::REGIONS.len() {
            first_per_view.push(ms);
        } else {
            per_session.push(ms);
        }
        initial.snapshot += steps.snapshot;
        initial.respond += steps.respond;
        initial.encode += steps.encode;
        initial.request += steps.request;
        initial.apply += steps.apply;
        initial.responses += steps.responses;
        initial.resources += steps.resources;
        initial.bytes += steps.bytes;
        proxies.push(proxy);
        if (s + 1) % 100 == 0 {
            log(format!(
                "{} sessions connected after {:.1} s; RSS {:.1} MiB",
                s + 1,
                t_all.elapsed().as_secs_f64(),
                rss()
            ));
        }
    }
    let rss_sessions = rss();
    let k0 = key(0, args.namespaces);
    let counts = xds.observe(&k0).proxies;
    if counts.acked as usize != args.sessions {
        bail!("after the initial exchange {k0} has {} of {} sessions acked", counts.acked, args.sessions);
    }
    log(format!(
        "initial: {} sessions in {:.1} s (server steps {:.1} s: snapshot {:.2}, respond {:.2}, encode {:.2}, request {:.2}, apply {:.2}); {:.1} MiB sent; RSS {rss_sessions:.1} MiB",
        args.sessions,
        t_all.elapsed().as_secs_f64(),
        initial.total().as_secs_f64(),
        initial.snapshot.as_secs_f64(),
        initial.respond.as_secs_f64(),
        initial.encode.as_secs_f64(),
        initial.request.as_secs_f64(),
        initial.apply.as_secs_f64(),
        initial.bytes as f64 / 1048576.0,
    ));

    let mut edits = Vec::new();
    let mut edit_totals = Vec::new();
    for e in 0..args.edits {
        let i = (e * 7_919 + 17) % args.contracts;
        let k = key(i, args.namespaces);
        let c = contract(i, args.namespaces, 300 + e)?;
        let endpoints: operator::ChannelEndpoints = typed(fixtures::channel_endpoints(i))?;
        let version = format!("v2-{i}-{e}");
        let t = Instant::now();
        xds.publish(k.clone(), version.clone(), Arc::new(c), endpoints);
        let publish = t.elapsed();
        let mut steps = Steps::default();
        for proxy in &mut proxies {
            exchange(&xds, proxy, &mut steps)?;
        }
        let counts = xds.observe(&k).proxies;
        if counts.acked as usize != args.sessions {
            bail!("edit {e}: {k} has {} of {} sessions acked", counts.acked, args.sessions);
        }
        let total = publish + steps.total();
        log(format!(
            "edit {e} ({k}): {:.1} ms (publish {:.2}, snapshot {:.1}, respond {:.1}, encode {:.1}, request {:.1}, apply {:.1}); {} responses, {} resources",
            total.as_secs_f64() * 1e3,
            publish.as_secs_f64() * 1e3,
            steps.snapshot.as_secs_f64() * 1e3,
            steps.respond.as_secs_f64() * 1e3,
            steps.encode.as_secs_f64() * 1e3,
            steps.request.as_secs_f64() * 1e3,
            steps.apply.as_secs_f64() * 1e3,
            steps.responses,
            steps.resources
        ));
        edit_totals.push(total.as_secs_f64() * 1e3);
        let mut j = steps.json();
        j["publish_ms"] = json!(publish.as_secs_f64() * 1e3);
        edits.push(j);
    }
    let edit_stats: Stats = stats(&edit_totals);
    let per_session_mib = (rss_sessions - rss_catalog) / args.sessions as f64;
    log(format!(
        "edits: server CPU per edit p50 {:.1} ms, max {:.1} ms; memory per session {:.3} MiB",
        edit_stats.p50, edit_stats.max, per_session_mib
    ));
    Ok(json!({
        "contracts": args.contracts, "namespaces": args.namespaces, "sessions": args.sessions,
        "own_views": args.own_views,
        "publish_ms": publish.as_secs_f64() * 1e3,
        "rss_mib": {"empty": rss_empty, "catalog": rss_catalog, "sessions": rss_sessions},
        "memory_per_session_mib": per_session_mib,
        "initial": initial.json(),
        "initial_first_session_per_view_ms": stats(&first_per_view),
        "initial_other_sessions_ms": stats(&per_session),
        "edits": edits,
        "edit_total_ms": edit_stats,
    }))
}
