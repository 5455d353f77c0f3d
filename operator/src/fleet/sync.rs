//! One member: the hub's propagated policies applied there, kept there, deleted there; its copies read
//! back for the roll-up.
//!
//! A pass ([`sync_once`]) lists the member's ContractPolicies, then:
//! - applies each propagated policy whose copy is missing or differs (server-side apply, field manager
//!   [`FIELD_MANAGER`], forced: the hub's baseline wins). Server-side apply leaves alone what another
//!   manager added (a hand-added `spec.drill`, say); a copy that still differs after the apply gets its
//!   whole `spec` replaced (JSON patch), so that a hand edit never survives;
//! - deletes every copy labelled with this hub's name that the hub no longer propagates.
//!
//! [`follow`] runs passes for as long as the member is registered: on every change of the propagated
//! set, on every change of the member's ContractPolicies (a watch on the member: a hand edit is reverted
//! at once, an audit's new result reaches the hub at once), and every resync interval (an unreachable
//! member is noticed, and retried, at that pace).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crds::{ContractPolicy, FLEET_HUB_LABEL, PROPAGATE_LABEL};
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::members::Member;
use super::metrics::FleetMetrics;
use super::rollup::{Copy, Observation};

/// The field manager of everything the hub writes, on members and on its own policies' status.
pub const FIELD_MANAGER: &str = "channel-contracts-fleet";

/// The propagated policies, by name; None until the hub's watch has listed them once (until then nothing
/// is deleted on members).
pub type Desired = Option<Arc<BTreeMap<String, ContractPolicy>>>;

/// What a pass needs besides the member.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This hub's name: the value of [`FLEET_HUB_LABEL`] on what it applies.
    pub hub: String,
    /// How often a member is synced with no change seen.
    pub resync: Duration,
    /// How long one pass may take before the member counts as unreachable.
    pub timeout: Duration,
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The member's API server answered with an error (it is reachable).
    #[error("{0}")]
    Api(String),
    /// It did not answer.
    #[error("{0}")]
    Unreachable(String),
}

fn classify(e: kube::Error) -> SyncError {
    match e {
        kube::Error::Api(status) => SyncError::Api(format!("{} ({})", status.message, status.code)),
        other => SyncError::Unreachable(root_cause(&other)),
    }
}

/// An error and its deepest cause (`client error (Connect): Connection refused (os error 111)`): the
/// top one alone rarely says what happened.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut deepest = e.source();
    while let Some(next) = deepest.and_then(|d| d.source()) {
        deepest = Some(next);
    }
    match deepest {
        Some(cause) if !e.to_string().contains(&cause.to_string()) => format!("{e}: {cause}"),
        _ => e.to_string(),
    }
}

/// The policy as the hub applies it to a member: name, the hub's labels (but not the propagate label,
/// so that a member which is itself a hub does not pass it on) plus [`FLEET_HUB_LABEL`], and the spec.
pub fn applied(policy: &ContractPolicy, hub: &str) -> serde_json::Value {
    let mut labels: BTreeMap<String, String> = policy
        .labels()
        .iter()
        .filter(|(k, _)| k.as_str() != PROPAGATE_LABEL)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(FLEET_HUB_LABEL.to_owned(), hub.to_owned());
    serde_json::json!({
        "apiVersion": format!("{}/{}", crds::GROUP, crds::VERSION),
        "kind": "ContractPolicy",
        "metadata": {"name": policy.name_any(), "labels": labels},
        "spec": policy.spec,
    })
}

fn copy_of(p: &ContractPolicy, hub: &str) -> Copy {
    Copy {
        spec: Some(p.spec.clone()),
        labelled: p.labels().get(FLEET_HUB_LABEL).map(String::as_str) == Some(hub),
        generation: p.metadata.generation,
        status: p.status.clone(),
        apply_error: None,
    }
}

/// What one pass changed on the member.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Copies created.
    pub created: Vec<String>,
    /// Copies that differed and were restored.
    pub restored: Vec<String>,
    /// Copies deleted (no longer propagated).
    pub deleted: Vec<String>,
}

/// One pass over one member; the copies of every propagated policy as they stand afterwards.
pub async fn sync_once(
    client: &Client,
    desired: &BTreeMap<String, ContractPolicy>,
    synced: bool,
    hub: &str,
) -> Result<(BTreeMap<String, Copy>, Changes), SyncError> {
    let api: Api<ContractPolicy> = Api::all(client.clone());
    let existing: BTreeMap<String, ContractPolicy> = api
        .list(&ListParams::default())
        .await
        .map_err(classify)?
        .items
        .into_iter()
        .map(|p| (p.name_any(), p))
        .collect();
    let mut copies = BTreeMap::new();
    let mut changes = Changes::default();
    for (name, policy) in desired {
        let current = existing.get(name).map(|p| copy_of(p, hub));
        let wanted = |c: &Copy| c.labelled && c.spec.as_ref() == Some(&policy.spec);
        if let Some(c) = current.as_ref().filter(|c| wanted(c)) {
            copies.insert(name.clone(), c.clone());
            continue;
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let result = match api.patch(name, &params, &Patch::Apply(applied(policy, hub))).await {
            Ok(after) if wanted(&copy_of(&after, hub)) => Ok(after),
            // Fields another manager added survive an apply: replace the whole spec (a conflict with a
            // concurrent edit fails this pass; the next one retries).
            Ok(mut after) => {
                after.spec = policy.spec.clone();
                let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
                api.replace(name, &params, &after).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(after) => {
                if current.is_some() {
                    changes.restored.push(name.clone());
                } else {
                    changes.created.push(name.clone());
                }
                copies.insert(name.clone(), copy_of(&after, hub));
            }
            Err(kube::Error::Api(status)) => {
                let mut c = current.unwrap_or_else(no_copy);
                c.apply_error = Some(format!("{} ({})", status.message, status.code));
                copies.insert(name.clone(), c);
            }
            Err(other) => return Err(classify(other)),
        }
    }
    if synced {
        for (name, p) in &existing {
            let ours = p.labels().get(FLEET_HUB_LABEL).map(String::as_str) == Some(hub);
            if ours && !desired.contains_key(name) && p.metadata.deletion_timestamp.is_none() {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => changes.deleted.push(name.clone()),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(classify(e)),
                }
            }
        }
    }
    Ok((copies, changes))
}

fn no_copy() -> Copy {
    Copy { spec: None, labelled: false, generation: None, status: None, apply_error: None }
}

/// Where members publish what the hub knows of them.
#[derive(Debug, Default)]
pub struct Board {
    observations: std::sync::Mutex<BTreeMap<String, Observation>>,
    /// Notified on every change.
    pub changed: Notify,
}

impl Board {
    /// Every member's observation.
    pub fn snapshot(&self) -> BTreeMap<String, Observation> {
        self.observations.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Sets a member's observation; notifies when it changed.
    pub fn set(&self, member: &str, seen: Observation) {
        let changed = match self.observations.lock() {
            Ok(mut m) => m.insert(member.to_owned(), seen.clone()).as_ref() != Some(&seen),
            Err(_) => false,
        };
        if changed {
            self.changed.notify_one();
        }
    }

    /// Forgets a member (its Secret is gone).
    pub fn remove(&self, member: &str) {
        if let Ok(mut m) = self.observations.lock()
            && m.remove(member).is_some()
        {
            self.changed.notify_one();
        }
    }

    /// One member's observation.
    pub fn get(&self, member: &str) -> Option<Observation> {
        self.observations.lock().ok().and_then(|m| m.get(member).cloned())
    }
}

/// Syncs one member until `cancel` (its Secret changed or went, or the hub stops).
pub async fn follow(
    member: Member,
    mut desired: watch::Receiver<Desired>,
    settings: Settings,
    board: Arc<Board>,
    metrics: Arc<FleetMetrics>,
    cancel: CancellationToken,
) {
    let name = member.name.clone();
    let client = match client_for(&member, settings.timeout).await {
        Ok(c) => c,
        Err(why) => {
            tracing::warn!(member = %name, secret = %member.secret, error = %why, "cannot build a client for the member");
            board.set(&name, Observation::unusable(why));
            return;
        }
    };
    tracing::info!(member = %name, server = %member.server, secret = %member.secret, "following member cluster");
    // The member's ContractPolicies changing (a hand edit, its audit's result) wakes a pass.
    let wake = Arc::new(Notify::new());
    let watch_task = tokio::spawn({
        let (client, wake, name) = (client.clone(), wake.clone(), name.clone());
        async move {
            let api: Api<ContractPolicy> = Api::all(client);
            let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(_) => wake.notify_one(),
                    Err(e) => tracing::debug!(member = %name, error = %e, "the member's watch failed; retrying"),
                }
            }
        }
    });
    let mut seen = board.get(&name).unwrap_or_default();
    loop {
        let snapshot = desired.borrow_and_update().clone();
        let (policies, synced) = match &snapshot {
            Some(p) => (p.clone(), true),
            None => (Arc::new(BTreeMap::new()), false),
        };
        let started = std::time::Instant::now();
        let outcome =
            tokio::time::timeout(settings.timeout, sync_once(&client, &policies, synced, &settings.hub)).await;
        let now = Timestamp::now();
        let outcome =
            outcome.unwrap_or_else(|_| Err(SyncError::Unreachable(format!("no answer within {:?}", settings.timeout))));
        match outcome {
            Ok((copies, changes)) => {
                for c in &changes.created {
                    tracing::info!(member = %name, policy = %c, "applied the policy to the member");
                }
                for c in &changes.restored {
                    tracing::info!(member = %name, policy = %c, "the member's copy had drifted: restored");
                }
                for c in &changes.deleted {
                    tracing::info!(member = %name, policy = %c, "deleted the policy on the member: the hub no longer propagates it");
                }
                metrics.record_pass(&name, "ok", &changes, started.elapsed());
                if !seen.reachable && seen.error.is_some() {
                    tracing::info!(member = %name, "the member answers again");
                }
                let error = copies.values().find_map(|c| c.apply_error.clone());
                seen = Observation {
                    reachable: true,
                    error: None,
                    unreachable_since: None,
                    last_contact: Some(now),
                    copies,
                };
                if let Some(e) = error {
                    tracing::warn!(member = %name, error = %e, "applying a policy to the member failed");
                }
            }
            Err(SyncError::Api(e)) => {
                metrics.record_pass(&name, "error", &Changes::default(), started.elapsed());
                tracing::warn!(member = %name, error = %e, "the member refused the hub's request");
                seen = Observation {
                    reachable: true,
                    error: Some(e),
                    unreachable_since: None,
                    last_contact: Some(now),
                    copies: seen.copies,
                };
            }
            Err(SyncError::Unreachable(e)) => {
                metrics.record_pass(&name, "unreachable", &Changes::default(), started.elapsed());
                if seen.reachable || seen.error.is_none() {
                    tracing::warn!(member = %name, error = %e, "the member is unreachable");
                }
                let since =
                    if seen.reachable || seen.unreachable_since.is_none() { Some(now) } else { seen.unreachable_since };
                seen = Observation { reachable: false, error: Some(e), unreachable_since: since, ..seen };
            }
        }
        metrics.record_member(&name, &seen);
        board.set(&name, seen.clone());
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = desired.changed() => if changed.is_err() { break },
            () = wake.notified() => {
                // Coalesce a burst (an apply's own events, an audit writing several policies).
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            () = tokio::time::sleep(settings.resync) => {}
        }
    }
    watch_task.abort();
}

/// A client for the member, with its kubeconfig's credentials; the error quotes no credential.
async fn client_for(member: &Member, timeout: Duration) -> Result<Client, String> {
    let options = kube::config::KubeConfigOptions::default();
    let mut config = kube::Config::from_custom_kubeconfig(member.kubeconfig.clone(), &options)
        .await
        .map_err(|e| format!("Secret {}: its kubeconfig cannot be used: {e}", member.secret))?;
    config.connect_timeout = Some(timeout.min(Duration::from_secs(5)));
    Client::try_from(config).map_err(|e| format!("Secret {}: no client for its kubeconfig: {e}", member.secret))
}
