use proptest::prelude::*;

use super::*;
use crate::envoy::pb::google::protobuf::Any;
use crate::publish::xds::catalog::{ChangeLog, Resource};
use crate::publish::xds::snapshot::{Item, Items};

/// The session as it was first written: every state a map of every name, compared whole. The session
/// must answer exactly as this does.
mod reference {
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Arc;

    use super::super::{DeltaResource, Event, Request, Response, names_contract};
    use crate::envoy::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
    use crate::model::ContractKey;
    use crate::publish::xds::snapshot::{Item, Kind, Snapshot, owner};

    type State = HashMap<String, Arc<str>>;

    #[derive(Debug, Default)]
    struct TypeState {
        requested: bool,
        names: BTreeSet<String>,
        acked: State,
        answered_once: bool,
        in_flight: Option<(String, State)>,
        refused: Option<State>,
    }

    #[derive(Debug)]
    pub struct Session {
        delta: bool,
        stream: u64,
        sent: u64,
        types: [TypeState; 4],
    }

    impl Session {
        pub fn new(stream: u64, delta: bool) -> Self {
            Self { delta, stream, sent: 0, types: Default::default() }
        }

        pub fn request(&mut self, request: Request) -> Vec<Event> {
            let Some(kind) = Kind::of(&request.type_url) else { return Vec::new() };
            let delta = self.delta;
            let state = &mut self.types[kind.index()];
            let first = !state.requested;
            state.requested = true;
            if !kind.wildcard() {
                if delta {
                    for name in &request.unsubscribe {
                        state.names.remove(name);
                        state.acked.remove(name);
                    }
                    state.names.extend(request.subscribe.iter().cloned());
                } else {
                    state.names = request.names.iter().cloned().collect();
                }
            }
            if delta && first {
                for (name, version) in &request.initial_versions {
                    if kind.wildcard() || state.names.contains(name) {
                        state.acked.insert(name.clone(), Arc::from(version.as_str()));
                    }
                }
            }
            let answers_in_flight = state.in_flight.as_ref().is_some_and(|(nonce, _)| *nonce == request.nonce);
            if request.nonce.is_empty() || !answers_in_flight {
                return Vec::new();
            }
            let Some((_, sent)) = state.in_flight.take() else { return Vec::new() };
            state.answered_once = true;
            match request.error {
                None => {
                    let before = std::mem::replace(&mut state.acked, sent);
                    if !kind.wildcard() {
                        let names = state.names.clone();
                        state.acked.retain(|name, _| names.contains(name));
                    }
                    state.refused = None;
                    let touched: BTreeSet<ContractKey> = changed_names(&before, &state.acked)
                        .chain(changed_names(&state.acked, &before))
                        .filter_map(|name| owner(kind, name))
                        .collect();
                    touched.into_iter().map(|key| self.running(key)).collect()
                }
                Some(message) => {
                    let suspects: Vec<(ContractKey, String)> = changed_names(&sent, &state.acked)
                        .filter_map(|name| Some((owner(kind, name)?, sent.get(name)?.to_string())))
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    state.refused = Some(sent);
                    let named: Vec<&(ContractKey, String)> =
                        suspects.iter().filter(|(key, _)| names_contract(&message, key)).collect();
                    let concerned: Vec<&(ContractKey, String)> =
                        if named.is_empty() { suspects.iter().collect() } else { named };
                    if concerned.is_empty() {
                        return vec![Event::RejectedShared { type_url: request.type_url, message }];
                    }
                    concerned
                        .into_iter()
                        .map(|(key, version)| Event::Rejected {
                            key: key.clone(),
                            version: version.clone(),
                            message: message.clone(),
                        })
                        .collect()
                }
            }
        }

        fn running(&self, key: ContractKey) -> Event {
            let mut versions = BTreeSet::new();
            let mut missing = false;
            for kind in Kind::OF_CONTRACTS {
                let of_key: BTreeSet<&Arc<str>> = self.types[kind.index()]
                    .acked
                    .iter()
                    .filter(|(name, _)| owner(kind, name).as_ref() == Some(&key))
                    .map(|(_, v)| v)
                    .collect();
                missing |= of_key.is_empty();
                versions.extend(of_key);
            }
            let version =
                (!missing && versions.len() == 1).then(|| versions.iter().next().map(|v| Arc::clone(v))).flatten();
            Event::Running { key, version }
        }

        pub fn respond(&mut self, snapshot: &Snapshot) -> Vec<Response> {
            let mut responses = Vec::new();
            for kind in Kind::ALL {
                let state = &self.types[kind.index()];
                if !state.requested || state.in_flight.is_some() {
                    continue;
                }
                let desired: HashMap<&str, &Item> = snapshot.kinds[kind.index()]
                    .iter()
                    .map(|(name, item)| (&**name, item))
                    .filter(|(name, _)| kind.wildcard() || state.names.contains(*name))
                    .collect();
                let same =
                    |s: &State| s.len() == desired.len() && desired.iter().all(|(n, i)| s.get(*n) == Some(&i.version));
                if (state.answered_once && same(&state.acked)) || state.refused.as_ref().is_some_and(same) {
                    continue;
                }
                self.sent += 1;
                let nonce = format!("{}-{}", self.stream, self.sent);
                let state = &self.types[kind.index()];
                let response = if self.delta {
                    let mut resources: Vec<DeltaResource> = desired
                        .iter()
                        .filter(|(name, item)| state.acked.get(**name) != Some(&item.version))
                        .map(|(name, item)| DeltaResource {
                            name: (*name).to_owned(),
                            version: item.version.to_string(),
                            resource: Some(item.resource.any.clone()),
                            ..DeltaResource::default()
                        })
                        .collect();
                    resources.sort_by(|a, b| a.name.cmp(&b.name));
                    let mut removed: Vec<String> =
                        state.acked.keys().filter(|name| !desired.contains_key(name.as_str())).cloned().collect();
                    removed.sort();
                    Response::Delta(DeltaDiscoveryResponse {
                        system_version_info: format!("g{}", snapshot.generation),
                        resources,
                        type_url: kind.type_url(),
                        removed_resources: removed,
                        nonce: nonce.clone(),
                        ..DeltaDiscoveryResponse::default()
                    })
                } else {
                    let mut items: Vec<(&&str, &&Item)> = desired.iter().collect();
                    items.sort_by(|a, b| a.0.cmp(b.0));
                    Response::Sotw(DiscoveryResponse {
                        version_info: format!("g{}-{}", snapshot.generation, self.sent),
                        resources: items.iter().map(|(_, item)| item.resource.any.clone()).collect(),
                        type_url: kind.type_url(),
                        nonce: nonce.clone(),
                        ..DiscoveryResponse::default()
                    })
                };
                let sent: State = desired.iter().map(|(n, i)| ((*n).to_owned(), i.version.clone())).collect();
                self.types[kind.index()].in_flight = Some((nonce, sent));
                responses.push(response);
            }
            responses
        }
    }

    fn changed_names<'a>(a: &'a State, b: &'a State) -> impl Iterator<Item = &'a String> {
        a.iter().filter(|(name, version)| b.get(*name) != Some(version)).map(|(name, _)| name)
    }
}

// --- a small catalog of fake contracts -------------------------------------------------------------

/// The contracts of the scenarios: `c1-x` sorts between `c1`'s route and `c1`'s other resources.
const CONTRACTS: [(&str, &str); 5] = [("a", "c0"), ("a", "c1"), ("a", "c1-x"), ("b", "c0"), ("b", "c2")];

fn key(i: usize) -> ContractKey {
    let (namespace, name) = CONTRACTS[i];
    ContractKey { namespace: namespace.into(), name: name.into() }
}

/// What the fake catalog serves of a contract: its version, and whether it has a third cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Served {
    version: u32,
    extra: bool,
    port: u16,
}

#[derive(Debug)]
struct Catalog {
    served: [Option<Served>; 5],
    generation: u64,
    log: Arc<ChangeLog>,
}

impl Catalog {
    fn new(log_capacity: usize) -> Self {
        Self { served: [None; 5], generation: 0, log: Arc::new(ChangeLog::with_capacity(log_capacity)) }
    }

    fn set(&mut self, i: usize, served: Option<Served>) {
        if self.served[i] != served {
            self.served[i] = served;
            self.generation += 1;
            Arc::make_mut(&mut self.log).record(self.generation, key(i));
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        let mut kinds: [Items; 4] = Default::default();
        let mut add = |kind: Kind, name: String, version: &str| {
            let any = Any { type_url: kind.type_url(), value: format!("{name}@{version}").into_bytes() };
            let name: Arc<str> = Arc::from(name);
            let item = Item { version: Arc::from(version), resource: Arc::new(Resource { name: name.clone(), any }) };
            kinds[kind.index()].insert(name, item);
        };
        let mut ports = BTreeSet::new();
        for (i, served) in self.served.iter().enumerate() {
            let Some(served) = served else { continue };
            let (namespace, name) = CONTRACTS[i];
            let base = format!("csp~{namespace}~{name}");
            let version = format!("v{}", served.version);
            add(Kind::Cluster, base.clone(), &version);
            add(Kind::Cluster, format!("{base}~primary"), &version);
            if served.extra {
                add(Kind::Cluster, format!("{base}~cache"), &version);
            }
            add(Kind::Scope, format!("{base}~{name}.{namespace}:{}", served.port), &version);
            add(Kind::Route, base, &version);
            ports.insert(served.port);
        }
        for port in ports {
            add(Kind::Listener, format!("csp~port~{port}"), &format!("listener-v1:0.0.0.0:{port}"));
        }
        Arc::new(Snapshot { generation: self.generation, kinds: kinds.map(Arc::new), log: self.log.clone() })
    }
}

// --- scenarios -------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// A contract changes, appears or goes.
    Serve { contract: usize, served: Option<Served> },
    /// Both sessions respond to the current snapshot.
    Respond,
    /// The proxy acknowledges the in-flight response of a kind.
    Ack { kind: usize },
    /// The proxy rejects it, naming a contract or not.
    Nack { kind: usize, naming: Option<usize> },
    /// An answer with a nonce that is not the one in flight.
    Stale { kind: usize },
    /// Route subscriptions change (delta), or the names listed change (state of the world).
    Names { subscribe: Vec<usize>, unsubscribe: Vec<usize> },
    /// A request of a kind with no nonce (the first one, with a reconnecting proxy's versions).
    Ask { kind: usize, initial: Vec<(usize, u32)> },
}

fn served() -> impl Strategy<Value = Option<Served>> {
    prop::option::weighted(0.85, (0u32..4, any::<bool>(), prop::sample::select(vec![80u16, 8080])))
        .prop_map(|s| s.map(|(version, extra, port)| Served { version, extra, port }))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..5usize, served()).prop_map(|(contract, served)| Op::Serve { contract, served }),
        4 => Just(Op::Respond),
        4 => (0..4usize).prop_map(|kind| Op::Ack { kind }),
        1 => (0..4usize, prop::option::of(0..5usize)).prop_map(|(kind, naming)| Op::Nack { kind, naming }),
        1 => (0..4usize).prop_map(|kind| Op::Stale { kind }),
        1 => (prop::collection::vec(0..5usize, 0..3), prop::collection::vec(0..5usize, 0..2))
            .prop_map(|(subscribe, unsubscribe)| Op::Names { subscribe, unsubscribe }),
        1 => (0..4usize, prop::collection::vec((0..5usize, 0..4u32), 0..3)).prop_map(|(kind, initial)| Op::Ask { kind, initial }),
    ]
}

fn route_name(i: usize) -> String {
    let (namespace, name) = CONTRACTS[i];
    format!("csp~{namespace}~{name}")
}

/// Runs a scenario through the session and the reference; panics where they differ.
fn run_scenario(delta: bool, log_capacity: usize, ops: &[Op]) {
    let mut catalog = Catalog::new(log_capacity);
    let mut session = Session::new(7, delta);
    let mut model = reference::Session::new(7, delta);
    let mut nonces: [Option<String>; 4] = Default::default();
    let mut routes: BTreeSet<String> = BTreeSet::new();
    let both = |session: &mut Session, model: &mut reference::Session, request: Request, step: usize| {
        let got = session.request(request.clone());
        let want = model.request(request.clone());
        assert_eq!(got, want, "step {step}: events for {request:?}");
    };
    for kind in Kind::ALL {
        let request = Request {
            type_url: kind.type_url(),
            names: Vec::new(),
            subscribe: if kind.wildcard() { Vec::new() } else { vec![route_name(0), route_name(1)] },
            ..Request::default()
        };
        if !kind.wildcard() {
            routes.extend(request.subscribe.iter().cloned());
        }
        let request = if delta { request } else { Request { names: routes.iter().cloned().collect(), ..request } };
        both(&mut session, &mut model, request, 0);
    }
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Serve { contract, served } => catalog.set(*contract, *served),
            Op::Respond => {
                let snapshot = catalog.snapshot();
                let got = session.respond(&snapshot);
                let want = model.respond(&snapshot);
                assert_eq!(got, want, "step {step}: responses at generation {}", snapshot.generation);
                for response in got {
                    let (type_url, nonce) = match response {
                        Response::Delta(r) => (r.type_url, r.nonce),
                        Response::Sotw(r) => (r.type_url, r.nonce),
                    };
                    if let Some(kind) = Kind::of(&type_url) {
                        nonces[kind.index()] = Some(nonce);
                    }
                }
            }
            Op::Ack { kind } | Op::Nack { kind, .. } | Op::Stale { kind } => {
                let kind = Kind::ALL[*kind];
                let Some(nonce) = nonces[kind.index()].clone() else { continue };
                let (nonce, error) = match op {
                    Op::Ack { .. } => (nonce, None),
                    Op::Nack { naming, .. } => (
                        nonce,
                        Some(match naming {
                            Some(i) => format!("{}~primary: invalid", route_name(*i)),
                            None => "something is wrong".to_owned(),
                        }),
                    ),
                    _ => ("7-0".to_owned(), None),
                };
                let names = if !delta && !kind.wildcard() { routes.iter().cloned().collect() } else { Vec::new() };
                both(
                    &mut session,
                    &mut model,
                    Request { type_url: kind.type_url(), nonce, error, names, ..Request::default() },
                    step,
                );
            }
            Op::Names { subscribe, unsubscribe } => {
                let subscribe: Vec<String> = subscribe.iter().map(|i| route_name(*i)).collect();
                let unsubscribe: Vec<String> = unsubscribe.iter().map(|i| route_name(*i)).collect();
                for name in &unsubscribe {
                    routes.remove(name);
                }
                routes.extend(subscribe.iter().cloned());
                let request = if delta {
                    Request { type_url: Kind::Route.type_url(), subscribe, unsubscribe, ..Request::default() }
                } else {
                    let nonce = nonces[Kind::Route.index()].clone().unwrap_or_default();
                    Request {
                        type_url: Kind::Route.type_url(),
                        nonce,
                        names: routes.iter().cloned().collect(),
                        ..Request::default()
                    }
                };
                both(&mut session, &mut model, request, step);
            }
            Op::Ask { kind, initial } => {
                let kind = Kind::ALL[*kind];
                let initial_versions = initial
                    .iter()
                    .map(|(i, v)| {
                        (
                            if kind == Kind::Route { route_name(*i) } else { format!("{}~primary", route_name(*i)) },
                            format!("v{v}"),
                        )
                    })
                    .collect();
                let names = if !delta && !kind.wildcard() { routes.iter().cloned().collect() } else { Vec::new() };
                both(
                    &mut session,
                    &mut model,
                    Request { type_url: kind.type_url(), initial_versions, names, ..Request::default() },
                    step,
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn a_delta_session_answers_as_comparing_every_name_would(ops in prop::collection::vec(op(), 1..60), capacity in prop::sample::select(vec![1usize, 3, 1000])) {
        run_scenario(true, capacity, &ops);
    }

    #[test]
    fn a_state_of_the_world_session_answers_as_comparing_every_name_would(ops in prop::collection::vec(op(), 1..60), capacity in prop::sample::select(vec![1usize, 3, 1000])) {
        run_scenario(false, capacity, &ops);
    }
}

#[test]
fn an_edit_sends_only_the_changed_contract_and_its_ack_reports_it_running() {
    let mut catalog = Catalog::new(100);
    for i in 0..5 {
        catalog.set(i, Some(Served { version: 1, extra: false, port: 80 }));
    }
    let mut session = Session::new(1, true);
    for kind in [Kind::Cluster, Kind::Listener, Kind::Scope] {
        assert!(session.request(Request { type_url: kind.type_url(), ..Request::default() }).is_empty());
    }
    let subscribe = (0..5).map(route_name).collect();
    session.request(Request { type_url: Kind::Route.type_url(), subscribe, ..Request::default() });
    let ack = |session: &mut Session, responses: Vec<Response>| -> Vec<Event> {
        responses
            .into_iter()
            .flat_map(|r| {
                let Response::Delta(r) = r else { panic!("delta") };
                session.request(Request { type_url: r.type_url, nonce: r.nonce, ..Request::default() })
            })
            .collect()
    };
    let responses = session.respond(&catalog.snapshot());
    assert_eq!(responses.len(), 4);
    let events = ack(&mut session, responses);
    assert!(events.contains(&Event::Running { key: key(2), version: Some("v1".into()) }), "{events:?}");
    assert!(session.respond(&catalog.snapshot()).is_empty(), "nothing new");

    catalog.set(2, Some(Served { version: 2, extra: true, port: 80 }));
    let responses = session.respond(&catalog.snapshot());
    let sent: Vec<(String, Vec<String>)> = responses
        .iter()
        .map(|r| {
            let Response::Delta(r) = r else { panic!("delta") };
            (r.type_url.clone(), r.resources.iter().map(|x| x.name.clone()).collect())
        })
        .collect();
    assert_eq!(
        sent,
        vec![
            (
                Kind::Cluster.type_url(),
                vec!["csp~a~c1-x".into(), "csp~a~c1-x~cache".into(), "csp~a~c1-x~primary".into()]
            ),
            (Kind::Scope.type_url(), vec!["csp~a~c1-x~c1-x.a:80".into()]),
            (Kind::Route.type_url(), vec!["csp~a~c1-x".into()]),
        ]
    );
    let events = ack(&mut session, responses);
    assert_eq!(
        events,
        vec![
            Event::Running { key: key(2), version: None },
            Event::Running { key: key(2), version: None },
            Event::Running { key: key(2), version: Some("v2".into()) },
        ]
    );
}

/// The protocol of one stream, from plain requests and snapshots (no change log: every name compared).
mod protocol {
    use super::super::*;
    use crate::envoy::pb::google::protobuf::Any;
    use crate::publish::xds::catalog::Resource;
    use crate::publish::xds::snapshot::{Item, Items};

    fn item(version: &str, name: &str) -> Item {
        Item {
            version: Arc::from(version),
            resource: Arc::new(Resource {
                name: Arc::from(name),
                any: Any { type_url: String::new(), value: name.as_bytes().to_vec() },
            }),
        }
    }

    /// A snapshot with contracts `(name, version)` in namespace `ns`: two clusters, one scope and one route each.
    fn snapshot(generation: u64, contracts: &[(&str, &str)]) -> Arc<Snapshot> {
        let mut kinds: [Items; 4] = Default::default();
        for (name, version) in contracts {
            let base = format!("csp~ns~{name}");
            for n in [format!("{base}~primary"), base.clone()] {
                kinds[Kind::Cluster.index()].insert(Arc::from(n.as_str()), item(version, &n));
            }
            let scope = format!("{base}~{name}.ns:80");
            kinds[Kind::Scope.index()].insert(Arc::from(scope.as_str()), item(version, &scope));
            kinds[Kind::Route.index()].insert(Arc::from(base.as_str()), item(version, &base));
        }
        kinds[Kind::Listener.index()].insert(Arc::from("csp~port~80"), item("l1", "csp~port~80"));
        Arc::new(Snapshot { generation, kinds: kinds.map(Arc::new), ..Snapshot::default() })
    }

    fn key(name: &str) -> ContractKey {
        ContractKey { namespace: "ns".into(), name: name.into() }
    }

    fn first(kind: Kind) -> Request {
        Request { type_url: kind.type_url(), ..Request::default() }
    }

    fn answer(kind: Kind, nonce: &str, error: Option<&str>) -> Request {
        Request {
            type_url: kind.type_url(),
            nonce: nonce.to_owned(),
            error: error.map(str::to_owned),
            ..Request::default()
        }
    }

    fn delta(r: &Response) -> &DeltaDiscoveryResponse {
        match r {
            Response::Delta(d) => d,
            Response::Sotw(_) => panic!("a state-of-the-world response on a delta stream"),
        }
    }

    /// Subscribes a delta session to everything, and ACKs until nothing more is sent; returns the events.
    fn sync_delta(session: &mut Session, snap: &Arc<Snapshot>) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let responses = session.respond(snap);
            if responses.is_empty() {
                return events;
            }
            for r in responses {
                let d = delta(&r);
                let kind = Kind::of(&d.type_url).expect("a known type");
                if kind == Kind::Scope {
                    // As Envoy does: subscribe to the routes the scopes name.
                    let routes: Vec<String> =
                        d.resources.iter().map(|r| r.name.rsplit_once('~').expect("scope").0.to_owned()).collect();
                    events.extend(session.request(answer(kind, &d.nonce, None)));
                    events.extend(session.request(Request { subscribe: routes, ..first(Kind::Route) }));
                } else {
                    events.extend(session.request(answer(kind, &d.nonce, None)));
                }
            }
        }
    }

    fn subscribe_all(session: &mut Session) {
        for kind in [Kind::Cluster, Kind::Listener, Kind::Scope] {
            assert!(session.request(first(kind)).is_empty());
        }
    }

    #[test]
    fn a_delta_proxy_gets_everything_then_only_what_changed_and_runs_each_contract_once_all_kinds_are_acked() {
        let mut session = Session::new(1, true);
        subscribe_all(&mut session);
        let snap = snapshot(1, &[("a", "v1"), ("b", "w1")]);
        let first_responses = session.respond(&snap);
        assert_eq!(first_responses.len(), 3, "clusters, listeners, scopes: routes wait for a subscription");
        assert_eq!(delta(&first_responses[0]).resources.len(), 4);
        assert!(session.respond(&snap).is_empty(), "one response per type in flight");
        // Answer them, subscribe to the routes the scopes name.
        let mut events = Vec::new();
        for r in &first_responses {
            let d = delta(r);
            events.extend(session.request(answer(Kind::of(&d.type_url).expect("kind"), &d.nonce, None)));
        }
        assert!(events.iter().all(|e| matches!(e, Event::Running { version: None, .. })), "no route yet: {events:?}");
        events.extend(
            session.request(Request { subscribe: vec!["csp~ns~a".into(), "csp~ns~b".into()], ..first(Kind::Route) }),
        );
        let routes = session.respond(&snap);
        assert_eq!(routes.len(), 1);
        let d = delta(&routes[0]);
        assert_eq!(d.resources.len(), 2);
        let events = session.request(answer(Kind::Route, &d.nonce, None));
        assert_eq!(
            events,
            vec![
                Event::Running { key: key("a"), version: Some("v1".into()) },
                Event::Running { key: key("b"), version: Some("w1".into()) },
            ]
        );

        // b changes: only b's resources are sent.
        let snap2 = snapshot(2, &[("a", "v1"), ("b", "w2")]);
        let responses = session.respond(&snap2);
        let clusters = delta(&responses[0]);
        let names: Vec<&str> = clusters.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["csp~ns~b", "csp~ns~b~primary"]);
        assert!(clusters.removed_resources.is_empty());
        assert!(
            responses.iter().all(|r| Kind::of(&delta(r).type_url) != Some(Kind::Listener)),
            "the listener did not change"
        );
        let mut events = Vec::new();
        for r in &responses {
            let d = delta(r);
            events.extend(session.request(answer(Kind::of(&d.type_url).expect("kind"), &d.nonce, None)));
        }
        events.extend(sync_delta(&mut session, &snap2));
        assert!(events.contains(&Event::Running { key: key("b"), version: Some("w2".into()) }), "{events:?}");
        // a goes: its resources are removed.
        let snap3 = snapshot(3, &[("b", "w2")]);
        let responses = session.respond(&snap3);
        let removed: Vec<&str> =
            responses.iter().flat_map(|r| delta(r).removed_resources.iter().map(String::as_str)).collect();
        assert!(removed.contains(&"csp~ns~a") && removed.contains(&"csp~ns~a~primary"), "{removed:?}");
    }

    #[test]
    fn a_nack_concerns_the_contracts_envoy_names_and_the_refused_state_is_not_sent_again() {
        let mut session = Session::new(7, true);
        subscribe_all(&mut session);
        sync_delta(&mut session, &snapshot(1, &[("a", "v1"), ("b", "w1")]));
        let snap = snapshot(2, &[("a", "v2"), ("b", "w2")]);
        let responses = session.respond(&snap);
        let clusters = delta(&responses[0]);
        let message = "Error adding/updating cluster(s) csp~ns~a~primary: Didn't find a registered implementation";
        let events = session.request(answer(Kind::Cluster, &clusters.nonce, Some(message)));
        assert_eq!(events, vec![Event::Rejected { key: key("a"), version: "v2".into(), message: message.into() }]);
        assert!(
            session.respond(&snap).iter().all(|r| Kind::of(&delta(r).type_url) != Some(Kind::Cluster)),
            "the refused clusters are not sent again"
        );
        // A NACK whose message names no contract concerns every contract the response changed: here b only,
        // since a goes back to the version the proxy has.
        let snap3 = snapshot(3, &[("a", "v1"), ("b", "w3")]);
        let responses = session.respond(&snap3);
        let clusters =
            responses.iter().map(delta).find(|d| Kind::of(&d.type_url) == Some(Kind::Cluster)).expect("clusters");
        let events = session.request(answer(Kind::Cluster, &clusters.nonce, Some("something failed")));
        assert_eq!(
            events,
            vec![Event::Rejected { key: key("b"), version: "w3".into(), message: "something failed".into() }]
        );
    }

    #[test]
    fn names_match_whole_contract_names_only() {
        assert!(names_contract("cluster 'csp~ns~a~primary' rejected", &key("a")));
        assert!(names_contract("cluster(s) csp~ns~a: bad", &key("a")));
        assert!(!names_contract("cluster(s) csp~ns~ab~primary: bad", &key("a")));
        assert!(!names_contract("cluster(s) csp~ns~a-b~primary: bad", &key("a")));
        assert!(!names_contract("cluster(s) csp~ns~a.b~primary: bad", &key("a")));
    }

    #[test]
    fn a_state_of_the_world_proxy_gets_full_state_and_stale_answers_are_ignored() {
        let mut session = Session::new(3, false);
        assert!(session.request(first(Kind::Cluster)).is_empty());
        let empty = Arc::new(Snapshot::default());
        let responses = session.respond(&empty);
        assert_eq!(responses.len(), 1, "the first response is sent even if empty");
        let Response::Sotw(r) = &responses[0] else { panic!("a delta response on a SotW stream") };
        assert!(r.resources.is_empty());
        let nonce = r.nonce.clone();
        assert!(session.request(answer(Kind::Cluster, &nonce, None)).is_empty());
        let snap = snapshot(1, &[("a", "v1"), ("b", "w1")]);
        let responses = session.respond(&snap);
        let Response::Sotw(r) = &responses[0] else { panic!("SotW") };
        assert_eq!(r.resources.len(), 4);
        // A stale answer (an older nonce) is ignored: the response stays in flight.
        assert!(session.request(answer(Kind::Cluster, &nonce, Some("late NACK"))).is_empty());
        assert!(session.respond(&snap).is_empty());
        let snap2 = snapshot(2, &[("a", "v1"), ("b", "w2")]);
        assert!(
            session.request(answer(Kind::Cluster, &r.nonce, None)).iter().all(|e| matches!(e, Event::Running { .. }))
        );
        let responses = session.respond(&snap2);
        let Response::Sotw(r) = &responses[0] else { panic!("SotW") };
        assert_eq!(r.resources.len(), 4, "state of the world: every resource, not only b's");
    }
}
