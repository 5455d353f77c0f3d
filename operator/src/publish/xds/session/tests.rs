//! The protocol of one stream, from plain requests and snapshots.

use super::*;
use crate::envoy::pb::google::protobuf::Any;
use crate::publish::xds::catalog::Resource;

fn item(version: &str, name: &str) -> Item {
    Item {
        version: Arc::from(version),
        resource: Arc::new(Resource {
            name: name.to_owned(),
            any: Any { type_url: String::new(), value: name.as_bytes().to_vec() },
        }),
    }
}

/// A snapshot with contracts `(name, version)` in namespace `ns`: two clusters, one scope and one route each.
fn snapshot(generation: u64, contracts: &[(&str, &str)]) -> Snapshot {
    let mut s = Snapshot { generation, ..Snapshot::default() };
    for (name, version) in contracts {
        let base = format!("csp~ns~{name}");
        for n in [format!("{base}~primary"), base.clone()] {
            s.kinds[Kind::Cluster.index()].insert(n.clone(), item(version, &n));
        }
        let scope = format!("{base}~{name}.ns:80");
        s.kinds[Kind::Scope.index()].insert(scope.clone(), item(version, &scope));
        s.kinds[Kind::Route.index()].insert(base.clone(), item(version, &base));
    }
    s.kinds[Kind::Listener.index()].insert("csp~port~80".into(), item("l1", "csp~port~80"));
    s
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
fn sync_delta(session: &mut Session, snap: &Snapshot) -> Vec<Event> {
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
    let empty = Snapshot::default();
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
    assert!(session.request(answer(Kind::Cluster, &r.nonce, None)).iter().all(|e| matches!(e, Event::Running { .. })));
    let responses = session.respond(&snap2);
    let Response::Sotw(r) = &responses[0] else { panic!("SotW") };
    assert_eq!(r.resources.len(), 4, "state of the world: every resource, not only b's");
}
