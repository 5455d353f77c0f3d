//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas exactly one
//! reconciles. Every replica watches and serves `/readyz` and `/metrics`; only the leader reconciles
//! (the controller checks a [`tokio::sync::watch`] flag that this module sets).
//!
//! The protocol is client-go's: the holder renews `spec.renewTime` every retry period; another replica
//! takes the Lease once `renewTime + leaseDurationSeconds` has passed; every write is a `replace` carrying
//! the `resourceVersion` it read (optimistic concurrency: of two replicas racing for an expired Lease, one
//! gets 409 Conflict). A leader that cannot renew within the renew deadline, or finds another holder,
//! has lost: [`run`] returns [`LeaderError::Lost`] and the process exits so that a restart starts clean.
//! On shutdown the leader releases the Lease (no holder, 1s duration) so that a successor takes over at
//! once.
//!
//! [`decide`] is the pure part: what to do with the Lease as read, at a given time.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The Lease and the timings.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LeaderElectionArgs {
    /// Elect a leader among replicas on a Lease; only the leader reconciles. Off: this instance always
    /// reconciles (run exactly one).
    #[arg(long, env = "CSP_OPERATOR_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// The Lease's namespace (the namespace the operator runs in).
    #[arg(long, env = "POD_NAMESPACE", default_value = "csp-system")]
    pub leader_election_namespace: String,
    /// The Lease's name.
    #[arg(long, env = "CSP_OPERATOR_LEADER_ELECTION_LEASE", default_value = "channel-contracts-operator")]
    pub leader_election_lease: String,
    /// This instance's identity in the Lease (the pod name). Omitted: `$HOSTNAME-<pid>`.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a Lease stays valid after its last renewal.
    #[arg(long, env = "CSP_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = crds::duration::parse_flag)]
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leadership.
    #[arg(long, env = "CSP_OPERATOR_RENEW_DEADLINE", default_value = "10s", value_parser = crds::duration::parse_flag)]
    pub renew_deadline: Duration,
    /// How often the Lease is renewed or tried.
    #[arg(long, env = "CSP_OPERATOR_RETRY_PERIOD", default_value = "2s", value_parser = crds::duration::parse_flag)]
    pub retry_period: Duration,
}

impl LeaderElectionArgs {
    /// The identity: `--identity`, else `$HOSTNAME-<pid>`.
    pub fn identity(&self) -> String {
        self.identity.clone().filter(|i| !i.is_empty()).unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "operator".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// Why leadership ended.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease was lost (another holder, or no renewal within the deadline).
    #[error("lost the leader Lease {namespace}/{name}: {why}; exiting so that a restart rejoins the election cleanly")]
    Lost {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// What happened.
        why: String,
    },
}

/// What to do with the Lease as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, held by us.
    Create,
    /// It is free or expired: take it (one more transition).
    Take,
    /// We hold it: renew it.
    Renew,
    /// Another holder's Lease is valid: wait.
    Wait {
        /// The holder.
        holder: String,
    },
}

/// What to do with `lease` (None: it does not exist) at `now`, as `identity`.
pub fn decide(lease: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else { return Decision::Create };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Take;
    }
    let last = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0)));
    match last.and_then(|t| t.checked_add(duration).ok()) {
        Some(expiry) if expiry > now => Decision::Wait { holder },
        _ => Decision::Take,
    }
}

/// The Lease after `decision` (Create, Take or Renew) by `identity` at `now`.
pub fn claimed(
    existing: Option<&Lease>,
    decision: &Decision,
    identity: &str,
    duration: Duration,
    now: Timestamp,
) -> Lease {
    let mut lease = existing.cloned().unwrap_or_default();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX).max(1);
    match decision {
        Decision::Create => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(0);
        }
        Decision::Take => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        Decision::Renew | Decision::Wait { .. } => {}
    }
    spec.holder_identity = Some(identity.to_owned());
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(MicroTime(now));
    lease
}

enum Attempt {
    Held,
    HeldBy(String),
    Conflict,
}

async fn attempt(
    api: &Api<Lease>,
    name: &str,
    namespace: &str,
    identity: &str,
    duration: Duration,
) -> Result<Attempt, kube::Error> {
    let existing = api.get_opt(name).await?;
    let now = Timestamp::now();
    let decision = decide(existing.as_ref().and_then(|l| l.spec.as_ref()), identity, now);
    if let Decision::Wait { holder } = decision {
        return Ok(Attempt::HeldBy(holder));
    }
    let mut lease = claimed(existing.as_ref(), &decision, identity, duration, now);
    let result = if decision == Decision::Create {
        lease.metadata =
            ObjectMeta { name: Some(name.to_owned()), namespace: Some(namespace.to_owned()), ..ObjectMeta::default() };
        api.create(&PostParams::default(), &lease).await
    } else {
        // Carries the resourceVersion that was read: a concurrent writer makes this a 409.
        api.replace(name, &PostParams::default(), &lease).await
    };
    match result {
        Ok(_) => Ok(Attempt::Held),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, name: &str, identity: &str) {
    let Ok(Some(mut lease)) = api.get_opt(name).await else { return };
    let Some(spec) = lease.spec.as_mut() else { return };
    if spec.holder_identity.as_deref() != Some(identity) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = name, "released the leader Lease"),
        Err(e) => tracing::warn!(lease = name, error = %e, "could not release the leader Lease; it expires by itself"),
    }
}

/// Takes part in the election until `cancel`, setting `leader` while this instance holds the Lease.
/// Returns Err when leadership, once held, is lost.
pub async fn run(
    client: Client,
    args: LeaderElectionArgs,
    leader: watch::Sender<bool>,
    cancel: CancellationToken,
) -> Result<(), LeaderError> {
    let identity = args.identity();
    let (namespace, name) = (args.leader_election_namespace.clone(), args.leader_election_lease.clone());
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let lost = |why: String| LeaderError::Lost { namespace: namespace.clone(), name: name.clone(), why };
    let mut last_renewal: Option<Instant> = None;
    let mut last_holder = String::new();
    tracing::info!(lease = %name, namespace = %namespace, %identity, "joining the leader election");
    loop {
        let is_leader = *leader.borrow();
        match attempt(&api, &name, &namespace, &identity, args.lease_duration).await {
            Ok(Attempt::Held) => {
                last_renewal = Some(Instant::now());
                if !is_leader {
                    tracing::info!(lease = %name, %identity, "became the leader: reconciling");
                    leader.send_replace(true);
                }
            }
            Ok(Attempt::HeldBy(holder)) => {
                if is_leader {
                    return Err(lost(format!("{holder:?} holds it now")));
                }
                if holder != last_holder {
                    tracing::info!(lease = %name, %holder, "another instance leads; waiting");
                    last_holder = holder;
                }
            }
            Ok(Attempt::Conflict) => tracing::debug!(lease = %name, "the Lease changed while we wrote it; re-reading"),
            Err(e) => {
                tracing::warn!(lease = %name, namespace = %namespace, error = %e, "cannot read or write the leader Lease")
            }
        }
        if is_leader && last_renewal.is_none_or(|t| t.elapsed() > args.renew_deadline) {
            return Err(lost(format!("not renewed within {:?}", args.renew_deadline)));
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                if *leader.borrow() {
                    leader.send_replace(false);
                    release(&api, &name, &identity).await;
                }
                return Ok(());
            }
            _ = tokio::time::sleep(args.retry_period) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("timestamp")
    }

    fn spec(holder: Option<&str>, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            renew_time: Some(MicroTime(at(renewed))),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "me", at(100)), Decision::Create);
        assert_eq!(decide(Some(&spec(Some("me"), 0, 15)), "me", at(100)), Decision::Renew, "ours, even if expired");
        assert_eq!(decide(Some(&spec(None, 95, 15)), "me", at(100)), Decision::Take, "released");
        assert_eq!(decide(Some(&spec(Some(""), 95, 15)), "me", at(100)), Decision::Take, "released");
        assert_eq!(
            decide(Some(&spec(Some("other"), 95, 15)), "me", at(100)),
            Decision::Wait { holder: "other".into() }
        );
        assert_eq!(decide(Some(&spec(Some("other"), 80, 15)), "me", at(100)), Decision::Take, "expired");
        let no_times = LeaseSpec { holder_identity: Some("other".into()), ..LeaseSpec::default() };
        assert_eq!(decide(Some(&no_times), "me", at(100)), Decision::Take, "a Lease that was never renewed");
    }

    #[test]
    fn taking_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let now = at(100);
        let created = claimed(None, &Decision::Create, "me", Duration::from_secs(15), now);
        let s = created.spec.clone().expect("spec");
        assert_eq!(
            (s.holder_identity.as_deref(), s.lease_transitions, s.lease_duration_seconds),
            (Some("me"), Some(0), Some(15))
        );
        let renewed = claimed(Some(&created), &Decision::Renew, "me", Duration::from_secs(15), at(102));
        let r = renewed.spec.clone().expect("spec");
        assert_eq!(r.acquire_time, s.acquire_time);
        assert_eq!(r.renew_time, Some(MicroTime(at(102))));
        let taken = claimed(Some(&renewed), &Decision::Take, "you", Duration::from_secs(15), at(200));
        let t = taken.spec.expect("spec");
        assert_eq!((t.holder_identity.as_deref(), t.lease_transitions), (Some("you"), Some(1)));
        assert_eq!(t.acquire_time, Some(MicroTime(at(200))));
    }
}
