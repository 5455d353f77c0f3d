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
//! Pure: the server feeds it requests and snapshots and sends what it returns.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::snapshot::{Item, Kind, Snapshot, owner};
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
        version: Option<String>,
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

type State = HashMap<String, Arc<str>>;

#[derive(Debug, Default)]
struct TypeState {
    /// The proxy asked for the type.
    requested: bool,
    /// Names subscribed (routes).
    names: BTreeSet<String>,
    /// What the proxy has: name -> version.
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

    /// The version of a contract the proxy runs: all its resources of every kind at one version.
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
            (!missing && versions.len() == 1).then(|| versions.iter().next().map(|v| v.to_string())).flatten();
        Event::Running { key, version }
    }

    /// The responses to send now for `snapshot`: for each type in sending order that the proxy asked for,
    /// has no response in flight, and whose state differs from the proxy's (the first response is sent
    /// even if it is empty: Envoy waits for it).
    pub fn respond(&mut self, snapshot: &Snapshot) -> Vec<Response> {
        let mut responses = Vec::new();
        for kind in Kind::ALL {
            let state = &self.types[kind.index()];
            if !state.requested || state.in_flight.is_some() {
                continue;
            }
            let desired: HashMap<&String, &Item> = snapshot.kinds[kind.index()]
                .iter()
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
                        name: (*name).clone(),
                        version: item.version.to_string(),
                        resource: Some(item.resource.any.clone()),
                        ..DeltaResource::default()
                    })
                    .collect();
                resources.sort_by(|a, b| a.name.cmp(&b.name));
                let mut removed: Vec<String> =
                    state.acked.keys().filter(|name| !desired.contains_key(name)).cloned().collect();
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
                let mut items: Vec<(&&String, &&Item)> = desired.iter().collect();
                items.sort_by(|a, b| a.0.cmp(b.0));
                Response::Sotw(DiscoveryResponse {
                    version_info: format!("g{}-{}", snapshot.generation, self.sent),
                    resources: items.iter().map(|(_, item)| item.resource.any.clone()).collect(),
                    type_url: kind.type_url(),
                    nonce: nonce.clone(),
                    ..DiscoveryResponse::default()
                })
            };
            let sent: State = desired.iter().map(|(n, i)| ((*n).clone(), i.version.clone())).collect();
            self.types[kind.index()].in_flight = Some((nonce, sent));
            responses.push(response);
        }
        responses
    }
}

/// Names in `a` whose version differs in `b` (or that `b` lacks).
fn changed_names<'a>(a: &'a State, b: &'a State) -> impl Iterator<Item = &'a String> {
    a.iter().filter(|(name, version)| b.get(*name) != Some(version)).map(|(name, _)| name)
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
