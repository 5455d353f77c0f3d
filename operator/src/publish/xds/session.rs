//! One proxy's ADS stream, state-of-the-world or delta, as a state machine over snapshots: what the proxy
//! subscribed to, what it acknowledged, and the one response per type that waits for its ACK or NACK.
//!
//! - One response per type is in flight at a time; the next waits for the proxy's answer (ACK or NACK,
//!   matched by nonce; a request with an older nonce is a stale answer and is ignored, as the xDS
//!   protocol says). So every answer concerns exactly one response.
//! - An ACK makes the response's state the proxy's; the contracts whose resources it completes are
//!   reported as running that version ([`Event::Running`]).
//! - A NACK (`error_detail`) concerns the contracts whose resources that response changed; when Envoy's
//!   message names some of them (it names the resources it refused), it concerns those alone
//!   ([`Event::Rejected`]). The proxy keeps its previous state; the same state is never sent again.
//! - State of the world: each response carries every resource of the type (those subscribed, for routes).
//!   Delta: only what changed since the proxy's state, and the names removed; `initial_resource_versions`
//!   of a reconnecting proxy count as its state.
//!
//! What a proxy has, and what a response makes it have, is kept as a reference to the snapshot it came
//! from ([`State::Of`]) rather than as a list of every name: so a session costs little memory, and after a
//! change the next response is found by comparing only the resources of the contracts the catalog says
//! changed between the two snapshots ([`Snapshot::changed_since`]), not every resource of the type. When
//! that is not known (a state built from a reconnecting proxy's versions or an unsubscription, a log that
//! no longer reaches back), the states are compared name by name, which gives the same answer.
//!
//! Pure: the server feeds it requests and snapshots and sends what it returns.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::snapshot::{Kind, Snapshot, owner};
use crate::envoy::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource as DeltaResource,
};
use crate::model::ContractKey;

/// A request of either protocol, as the session reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// The type.
    pub type_url: String,
    /// The nonce of the response it answers; empty for a first request.
    pub nonce: String,
    /// Envoy's message when it rejects that response.
    pub error: Option<String>,
    /// State of the world: the names subscribed (routes).
    pub names: Vec<String>,
    /// Delta: names subscribed.
    pub subscribe: Vec<String>,
    /// Delta: names unsubscribed.
    pub unsubscribe: Vec<String>,
    /// Delta: what a reconnecting proxy already has.
    pub initial_versions: HashMap<String, String>,
}

impl From<DiscoveryRequest> for Request {
    fn from(r: DiscoveryRequest) -> Self {
        Self {
            type_url: r.type_url,
            nonce: r.response_nonce,
            error: r.error_detail.map(|e| e.message),
            names: r.resource_names,
            ..Self::default()
        }
    }
}

impl From<DeltaDiscoveryRequest> for Request {
    fn from(r: DeltaDiscoveryRequest) -> Self {
        Self {
            type_url: r.type_url,
            nonce: r.response_nonce,
            error: r.error_detail.map(|e| e.message),
            subscribe: r.resource_names_subscribe,
            unsubscribe: r.resource_names_unsubscribe,
            initial_versions: r.initial_resource_versions,
            ..Self::default()
        }
    }
}

/// A response of the stream's protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// State of the world.
    Sotw(DiscoveryResponse),
    /// Delta.
    Delta(DeltaDiscoveryResponse),
}

/// What an answer of the proxy means for the contracts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The proxy runs this version of the contract (None: it no longer has the contract, or has only part
    /// of one version).
    Running {
        /// The contract.
        key: ContractKey,
        /// The version all its resources are at.
        version: Option<Arc<str>>,
    },
    /// The proxy rejected this version of the contract.
    Rejected {
        /// The contract.
        key: ContractKey,
        /// The version rejected.
        version: String,
        /// Envoy's message.
        message: String,
    },
    /// The proxy rejected a response that changed no contract's resource (a listener).
    RejectedShared {
        /// The type.
        type_url: String,
        /// Envoy's message.
        message: String,
    },
}

/// Resource name -> version.
type Versions = HashMap<String, Arc<str>>;

/// Up to this many contracts, an answer's contracts are looked up by name range rather than by one pass
/// over everything the proxy has.
const FEW_CONTRACTS: usize = 64;

/// What a proxy has, or is sent, of one type: resource name -> version.
#[derive(Debug, Clone)]
enum State {
    /// Every resource of the type in a snapshot; for a type subscribed by name, those of these names.
    Of {
        /// The snapshot.
        snapshot: Arc<Snapshot>,
        /// The names subscribed when the state was made (None: a wildcard type).
        names: Option<Arc<BTreeSet<String>>>,
    },
    /// Name by name.
    Listed(Versions),
}

impl Default for State {
    fn default() -> Self {
        State::Listed(Versions::new())
    }
}

/// A name whose version differs between two states (`a` and `b`; None: absent).
#[derive(Debug)]
struct Difference<'s> {
    name: &'s str,
    a: Option<&'s Arc<str>>,
    b: Option<&'s Arc<str>>,
}

impl State {
    /// Every resource with its version.
    fn iter(&self, kind: Kind) -> Box<dyn Iterator<Item = (&str, &Arc<str>)> + '_> {
        match self {
            State::Of { snapshot, names } => Box::new(
                snapshot.kinds[kind.index()]
                    .iter()
                    .filter(move |(name, _)| names.as_ref().is_none_or(|n| n.contains(&***name)))
                    .map(|(name, item)| (&**name, &item.version)),
            ),
            State::Listed(versions) => Box::new(versions.iter().map(|(name, version)| (name.as_str(), version))),
        }
    }

    /// The version of one resource.
    fn get(&self, kind: Kind, name: &str) -> Option<&Arc<str>> {
        match self {
            State::Of { snapshot, names } => {
                if names.as_ref().is_some_and(|n| !n.contains(name)) {
                    return None;
                }
                snapshot.kinds[kind.index()].get(name).map(|item| &item.version)
            }
            State::Listed(versions) => versions.get(name),
        }
    }

    /// The resources of one contract with their versions.
    fn of_contract(&self, kind: Kind, key: &ContractKey) -> BTreeMap<&str, &Arc<str>> {
        match self {
            State::Of { snapshot, names } => snapshot
                .of_contract(kind, key)
                .filter(|(name, _)| names.as_ref().is_none_or(|n| n.contains(&***name)))
                .map(|(name, item)| (&**name, &item.version))
                .collect(),
            State::Listed(versions) => versions
                .iter()
                .filter(|(name, _)| owner(kind, name).as_ref() == Some(key))
                .map(|(name, version)| (name.as_str(), version))
                .collect(),
        }
    }

    /// The state name by name, to change it.
    fn listed(&mut self, kind: Kind) -> &mut Versions {
        if let State::Of { .. } = self {
            let versions: Versions =
                self.iter(kind).map(|(name, version)| (name.to_owned(), version.clone())).collect();
            *self = State::Listed(versions);
        }
        match self {
            State::Listed(versions) => versions,
            State::Of { .. } => unreachable!("made Listed above"),
        }
    }

    fn remove(&mut self, kind: Kind, name: &str) {
        if self.get(kind, name).is_some() {
            self.listed(kind).remove(name);
        }
    }

    /// Keeps the resources of these names alone (a type subscribed by name).
    fn retain_names(&mut self, kind: Kind, names: &Arc<BTreeSet<String>>) {
        if let State::Of { names: Some(of), .. } = self
            && (Arc::ptr_eq(of, names) || of.is_subset(names))
        {
            return;
        }
        self.listed(kind).retain(|name, _| names.contains(name));
    }
}

/// The contracts whose resources may differ between two states, when both come from snapshots (of the
/// session's view, with the same names subscribed) and the catalog's log says which contracts changed
/// between them; None when every name must be compared.
fn changed_between<'s>(kind: Kind, a: &'s State, b: &'s State) -> Option<BTreeSet<&'s ContractKey>> {
    if kind == Kind::Listener {
        // A few listeners, owned by no contract: compared whole.
        return None;
    }
    let (State::Of { snapshot: sa, names: na }, State::Of { snapshot: sb, names: nb }) = (a, b) else {
        return None;
    };
    let same_names = match (na, nb) {
        (None, None) => true,
        (Some(x), Some(y)) => Arc::ptr_eq(x, y) || x == y,
        _ => false,
    };
    if !same_names {
        return None;
    }
    if sa.generation <= sb.generation { sb.changed_since(sa) } else { sa.changed_since(sb) }
}

/// The names whose versions differ between `a` and `b`, in name order.
fn differences<'s>(kind: Kind, a: &'s State, b: &'s State) -> Vec<Difference<'s>> {
    let mut out = Vec::new();
    match changed_between(kind, a, b) {
        Some(keys) => {
            for key in keys {
                let (of_a, of_b) = (a.of_contract(kind, key), b.of_contract(kind, key));
                compare(
                    &mut out,
                    of_a.iter().map(|(n, v)| (*n, *v)),
                    |name| of_a.get(name).copied(),
                    of_b.iter().map(|(n, v)| (*n, *v)),
                    |name| of_b.get(name).copied(),
                );
            }
        }
        None => compare(&mut out, a.iter(kind), |name| a.get(kind, name), b.iter(kind), |name| b.get(kind, name)),
    }
    out.sort_by(|x, y| x.name.cmp(y.name));
    out
}

/// Adds to `out` the names of `a` at another version in `b` or absent there, and those of `b` absent in `a`.
fn compare<'s>(
    out: &mut Vec<Difference<'s>>,
    of_a: impl Iterator<Item = (&'s str, &'s Arc<str>)>,
    get_a: impl Fn(&str) -> Option<&'s Arc<str>>,
    of_b: impl Iterator<Item = (&'s str, &'s Arc<str>)>,
    get_b: impl Fn(&str) -> Option<&'s Arc<str>>,
) {
    for (name, version) in of_a {
        let other = get_b(name);
        if other != Some(version) {
            out.push(Difference { name, a: Some(version), b: other });
        }
    }
    for (name, version) in of_b {
        if get_a(name).is_none() {
            out.push(Difference { name, a: None, b: Some(version) });
        }
    }
}

/// The contracts that own these names.
fn owners<'n>(kind: Kind, names: impl Iterator<Item = &'n str>) -> BTreeSet<ContractKey> {
    let parts: BTreeSet<(&str, &str)> = names.filter_map(|name| owner_parts(kind, name)).collect();
    parts
        .into_iter()
        .map(|(namespace, name)| ContractKey { namespace: namespace.to_owned(), name: name.to_owned() })
        .collect()
}

/// [`owner`] without allocating: the namespace and name of the contract that owns a resource.
fn owner_parts(kind: Kind, name: &str) -> Option<(&str, &str)> {
    if kind == Kind::Listener {
        return None;
    }
    let mut parts = name.split('~');
    (parts.next()? == "csp").then_some(())?;
    Some((parts.next()?, parts.next()?))
}

#[derive(Debug, Default)]
struct TypeState {
    /// The proxy asked for the type.
    requested: bool,
    /// Names subscribed (routes); shared with the states made while they were these.
    names: Arc<BTreeSet<String>>,
    /// What the proxy has.
    acked: State,
    /// A response has been answered once (the first one is sent even if empty).
    answered_once: bool,
    /// The response awaiting an answer: its nonce and the state it makes.
    in_flight: Option<(String, State)>,
    /// A state the proxy rejected: not sent again.
    refused: Option<State>,
}

/// One stream.
#[derive(Debug)]
pub struct Session {
    delta: bool,
    stream: u64,
    sent: u64,
    types: [TypeState; 4],
}

impl Session {
    /// A session for stream `stream`.
    pub fn new(stream: u64, delta: bool) -> Self {
        Self { delta, stream, sent: 0, types: Default::default() }
    }

    /// Whether a response is awaiting an answer.
    pub fn awaiting(&self) -> bool {
        self.types.iter().any(|t| t.in_flight.is_some())
    }

    /// Takes a request; returns what its answer means.
    pub fn request(&mut self, request: Request) -> Vec<Event> {
        let Some(kind) = Kind::of(&request.type_url) else {
            tracing::debug!(type_url = %request.type_url, "a request for a type this server does not serve");
            return Vec::new();
        };
        let delta = self.delta;
        let state = &mut self.types[kind.index()];
        let first = !state.requested;
        state.requested = true;
        if !kind.wildcard() {
            if delta {
                if !request.unsubscribe.is_empty() || !request.subscribe.is_empty() {
                    let names = Arc::make_mut(&mut state.names);
                    for name in &request.unsubscribe {
                        names.remove(name);
                        state.acked.remove(kind, name);
                    }
                    names.extend(request.subscribe.iter().cloned());
                }
            } else {
                let names: BTreeSet<String> = request.names.iter().cloned().collect();
                if *state.names != names {
                    state.names = Arc::new(names);
                }
            }
        }
        if delta && first {
            for (name, version) in &request.initial_versions {
                if kind.wildcard() || state.names.contains(name) {
                    state.acked.listed(kind).insert(name.clone(), Arc::from(version.as_str()));
                }
            }
        }
        let answers_in_flight = state.in_flight.as_ref().is_some_and(|(nonce, _)| *nonce == request.nonce);
        if request.nonce.is_empty() || !answers_in_flight {
            if !request.nonce.is_empty() {
                tracing::debug!(stream = self.stream, type_url = %request.type_url, nonce = %request.nonce, "a stale answer: ignored");
            }
            return Vec::new();
        }
        let Some((_, sent)) = state.in_flight.take() else { return Vec::new() };
        state.answered_once = true;
        match request.error {
            None => {
                let before = std::mem::replace(&mut state.acked, sent);
                // Routes the proxy no longer subscribes to are not its.
                if !kind.wildcard() {
                    let names = state.names.clone();
                    state.acked.retain_names(kind, &names);
                }
                state.refused = None;
                let touched = owners(kind, differences(kind, &before, &state.acked).into_iter().map(|d| d.name));
                self.running(touched)
            }
            Some(message) => {
                let suspects: Vec<(ContractKey, String)> = differences(kind, &sent, &state.acked)
                    .into_iter()
                    .filter_map(|difference| Some((owner(kind, difference.name)?, difference.a?.to_string())))
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

    /// The version of each contract the proxy runs: all its resources of every kind at one version.
    fn running(&self, keys: BTreeSet<ContractKey>) -> Vec<Event> {
        let index: HashMap<(&str, &str), usize> =
            keys.iter().enumerate().map(|(i, k)| ((k.namespace.as_str(), k.name.as_str()), i)).collect();
        // Per contract: the versions of its resources, and of how many kinds it has any.
        let mut found: Vec<(BTreeSet<&Arc<str>>, usize)> = vec![Default::default(); keys.len()];
        for kind in Kind::OF_CONTRACTS {
            let acked = &self.types[kind.index()].acked;
            let mut seen = vec![false; keys.len()];
            if matches!(acked, State::Of { .. }) && keys.len() <= FEW_CONTRACTS {
                // A few contracts: their resources by name range in the snapshot.
                for (i, key) in keys.iter().enumerate() {
                    for version in acked.of_contract(kind, key).into_values() {
                        found[i].0.insert(version);
                        seen[i] = true;
                    }
                }
            } else {
                // Many, or a state listed name by name: one pass over it.
                for (name, version) in acked.iter(kind) {
                    if let Some(&i) = owner_parts(kind, name).and_then(|parts| index.get(&parts)) {
                        found[i].0.insert(version);
                        seen[i] = true;
                    }
                }
            }
            for (i, seen) in seen.into_iter().enumerate() {
                found[i].1 += usize::from(seen);
            }
        }
        keys.into_iter()
            .zip(found)
            .map(|(key, (versions, kinds))| {
                let complete = kinds == Kind::OF_CONTRACTS.len() && versions.len() == 1;
                let version = complete.then(|| versions.iter().next().map(|v| Arc::clone(v))).flatten();
                Event::Running { key, version }
            })
            .collect()
    }

    /// The responses to send now for `snapshot`: for each type in sending order that the proxy asked for,
    /// has no response in flight, and whose state differs from the proxy's (the first response is sent
    /// even if it is empty: Envoy waits for it).
    pub fn respond(&mut self, snapshot: &Arc<Snapshot>) -> Vec<Response> {
        let mut responses = Vec::new();
        for kind in Kind::ALL {
            let state = &self.types[kind.index()];
            if !state.requested || state.in_flight.is_some() {
                continue;
            }
            let desired =
                State::Of { snapshot: snapshot.clone(), names: (!kind.wildcard()).then(|| state.names.clone()) };
            let same = |s: &State| differences(kind, s, &desired).is_empty();
            if (state.answered_once && same(&state.acked)) || state.refused.as_ref().is_some_and(same) {
                continue;
            }
            self.sent += 1;
            let nonce = format!("{}-{}", self.stream, self.sent);
            let items = &snapshot.kinds[kind.index()];
            let response = if self.delta {
                let mut resources = Vec::new();
                let mut removed = Vec::new();
                if matches!(&state.acked, State::Listed(acked) if acked.is_empty()) {
                    // The proxy has nothing yet (its first response): everything desired, in name order.
                    resources = items
                        .iter()
                        .filter(|(name, _)| kind.wildcard() || state.names.contains(&***name))
                        .map(|(name, item)| DeltaResource {
                            name: name.to_string(),
                            version: item.version.to_string(),
                            resource: Some(item.resource.any.clone()),
                            ..DeltaResource::default()
                        })
                        .collect();
                } else {
                    for difference in differences(kind, &state.acked, &desired) {
                        match (difference.b, items.get(difference.name)) {
                            (Some(version), Some(item)) => resources.push(DeltaResource {
                                name: difference.name.to_owned(),
                                version: version.to_string(),
                                resource: Some(item.resource.any.clone()),
                                ..DeltaResource::default()
                            }),
                            _ => removed.push(difference.name.to_owned()),
                        }
                    }
                }
                Response::Delta(DeltaDiscoveryResponse {
                    system_version_info: format!("g{}", snapshot.generation),
                    resources,
                    type_url: kind.type_url(),
                    removed_resources: removed,
                    nonce: nonce.clone(),
                    ..DeltaDiscoveryResponse::default()
                })
            } else {
                Response::Sotw(DiscoveryResponse {
                    version_info: format!("g{}-{}", snapshot.generation, self.sent),
                    resources: items
                        .iter()
                        .filter(|(name, _)| kind.wildcard() || state.names.contains(&***name))
                        .map(|(_, item)| item.resource.any.clone())
                        .collect(),
                    type_url: kind.type_url(),
                    nonce: nonce.clone(),
                    ..DiscoveryResponse::default()
                })
            };
            self.types[kind.index()].in_flight = Some((nonce, desired));
            responses.push(response);
        }
        responses
    }
}

/// Whether Envoy's message names a resource of the contract (`csp~<ns>~<name>` as a whole name).
fn names_contract(message: &str, key: &ContractKey) -> bool {
    let base = format!("csp~{}~{}", key.namespace, key.name);
    message.match_indices(&base).any(|(at, _)| {
        message[at + base.len()..].chars().next().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    })
}

#[cfg(test)]
mod tests;
