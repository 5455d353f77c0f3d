//! The drill controller: ContractDrills run their faults through the proxies and are judged on the
//! proxies' own logs ([`decide`]: the pure decision).
//!
//! Every replica watches the drills and keeps [`Faults`]: the fault of every drill that runs and whose
//! duration has not passed ([`decide::fault_in_force`]). The reconciler publishes a contract with its
//! fault over xDS, so every replica serves the same faults to its proxies, and a fault ends when its
//! duration does, when its drill is deleted, or when the operator restarts after it, whatever else
//! happens: nothing has to remember to remove it. A change of the faults triggers the contracts it
//! concerns. Only the leader decides ([`decide::decide`]) and writes the drills' and contracts' status
//! and Events.

pub mod decide;
pub mod prometheus;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use crds::{ChannelContract, ContractDrill, DrillPhase};
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::decide::{Decision, Inputs, decide, fault_in_force, run_key};
use self::prometheus::Prometheus;
use crate::model::{ActiveFault, ContractKey, Faults};
use crate::observe::drill::DrillLog;
use crate::observe::drill_metrics::{DrillMetrics, DrillRow};
use crate::observe::trigger::Breach;
use crate::watch::Caches;

/// The field manager of the drill controller's status writes.
pub const MANAGER: &str = "channel-contracts-drills";

/// How often the faults and the drills are looked at, besides on every change of a drill.
pub const TICK: Duration = Duration::from_millis(500);

/// How often a trigger's breach ratio is asked of Prometheus (per drill).
pub const TRIGGER_EVERY: Duration = Duration::from_secs(15);

/// The faults in force at `now`, by contract: one per contract (the drill that started first).
pub fn faults_in_force(drills: &[Arc<ContractDrill>], now: Timestamp) -> BTreeMap<ContractKey, ActiveFault> {
    let mut running: Vec<&Arc<ContractDrill>> = drills.iter().filter(|d| fault_in_force(d, now)).collect();
    running.sort_by_key(|d| d.status.as_ref().and_then(|s| s.started_at.clone()).map(|t| t.0));
    let mut out = BTreeMap::new();
    for d in running {
        let key = ContractKey { namespace: d.namespace().unwrap_or_default(), name: d.spec.contract.clone() };
        let runs = d.status.as_ref().map_or(0, |s| s.runs);
        out.entry(key).or_insert_with(|| ActiveFault { run: run_key(d, runs), fault: d.spec.fault.clone() });
    }
    out
}

/// The replicas' merged logs of a drill run, by run key.
pub type LogsOf = Arc<dyn Fn(&str) -> Option<DrillLog> + Send + Sync>;

/// What the drill controller needs from the rest of `operator run`.
#[allow(missing_debug_implementations)]
pub struct DrillRuntime {
    /// The client.
    pub client: Client,
    /// The faults the reconciler reads.
    pub faults: Faults,
    /// The contracts' cache.
    pub caches: Caches,
    /// Whether this replica leads.
    pub leader: watch::Receiver<bool>,
    /// Contracts to reconcile (their fault changed).
    pub triggers: mpsc::UnboundedSender<ObjectRef<ChannelContract>>,
    /// Who publishes the Events.
    pub reporter: Reporter,
    /// The replicas' merged logs of a drill run (None: none reached the operator).
    pub logs: LogsOf,
    /// Whether this operator reconciles only some contracts (`--contract-selector`): then a drill whose
    /// contract it does not see belongs to another operator, and is left alone rather than aborted.
    pub scoped: bool,
    /// Where triggers read the SLA breach ratio (None: triggers never fire, and say why).
    pub prometheus: Option<Prometheus>,
    /// The drills' metrics.
    pub metrics: DrillMetrics,
}

/// What Prometheus said last about a drill's trigger, and when: by the drill's uid.
type Breaches = HashMap<String, (Instant, Breach)>;

/// Runs the drill controller until `cancel`.
pub async fn run(runtime: DrillRuntime, cancel: CancellationToken) {
    let api: Api<ContractDrill> = Api::all(runtime.client.clone());
    let (store, writer) = reflector::store::<ContractDrill>();
    let mut events =
        watcher(api, watcher::Config::default()).default_backoff().reflect(writer).applied_objects().boxed();
    tracing::info!("drill controller running");
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut breaches = Breaches::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            event = events.next() => match event {
                Some(Err(e)) => tracing::warn!(error = %e, "watching ContractDrills failed; retrying"),
                None => return,
                Some(Ok(_)) => {}
            },
            _ = tick.tick() => {}
        }
        refresh_faults(&runtime, &store);
        // Not awaited: the store fills only while this loop polls the watch.
        let listed = futures::FutureExt::now_or_never(store.wait_until_ready()).is_some_and(|r| r.is_ok());
        if *runtime.leader.borrow() && listed {
            let drills = store.state();
            breaches.retain(|uid, _| drills.iter().any(|d| d.uid().as_deref() == Some(uid.as_str())));
            for drill in &drills {
                if let Err(e) = step(&runtime, &store, drill, &mut breaches).await {
                    tracing::warn!(drill = %drill.name_any(), namespace = ?drill.namespace(), error = %e, "drill step failed; retrying");
                }
            }
            runtime.metrics.set_drills(drills.iter().map(|d| DrillRow::of(d)).collect());
        } else {
            runtime.metrics.set_drills(Vec::new());
        }
    }
}

/// Recomputes the faults in force; triggers the contracts whose fault changed.
fn refresh_faults(runtime: &DrillRuntime, store: &Store<ContractDrill>) {
    let next = faults_in_force(&store.state(), Timestamp::now());
    let changed: Vec<ContractKey> = {
        let mut faults = runtime.faults.write().unwrap_or_else(PoisonError::into_inner);
        let keys: std::collections::BTreeSet<&ContractKey> = faults.keys().chain(next.keys()).collect();
        let changed: Vec<ContractKey> =
            keys.into_iter().filter(|k| faults.get(*k) != next.get(*k)).map(|k| (*k).clone()).collect();
        *faults = next;
        changed
    };
    for key in changed {
        tracing::info!(contract = %key, "a drill's fault changed: republishing the contract");
        let _ = runtime.triggers.send(key.object_ref());
    }
}

/// One decision about one drill, carried out.
async fn step(
    runtime: &DrillRuntime,
    store: &Store<ContractDrill>,
    drill: &Arc<ContractDrill>,
    breaches: &mut Breaches,
) -> Result<(), kube::Error> {
    if drill.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let namespace = drill.namespace().unwrap_or_default();
    let contract = runtime.caches.contracts.get(&ObjectRef::new(&drill.spec.contract).within(&namespace));
    if contract.is_none() && runtime.scoped {
        return Ok(());
    }
    let another_running = store.state().iter().any(|other| {
        other.uid() != drill.uid()
            && other.namespace() == drill.namespace()
            && other.spec.contract == drill.spec.contract
            && other.status.as_ref().and_then(|s| s.phase) == Some(DrillPhase::Running)
    });
    let status = drill.status.clone().unwrap_or_default();
    let log =
        (status.phase == Some(DrillPhase::Running)).then(|| (runtime.logs)(&run_key(drill, status.runs))).flatten();
    let breach = match (&drill.spec.trigger, &runtime.prometheus) {
        (Some(trigger), Some(prometheus)) if status.phase != Some(DrillPhase::Running) => {
            Some(breach_of(prometheus, drill, trigger, breaches).await)
        }
        _ => None,
    };
    let inputs =
        Inputs { contract: contract.as_deref(), another_running, log: log.as_ref(), breach, now: Timestamp::now() };
    let mut decision = decide(drill, &inputs);
    if decision.status.as_ref() == drill.status.as_ref() {
        // Nothing new (a drill waiting for another one, say): no write.
        decision.status = None;
    }
    if decision.status.is_some() || decision.event.is_some() {
        tracing::info!(drill = %drill.name_any(), %namespace, event = ?decision.event.as_ref().map(|e| e.1), "drill step");
    }
    let finished = decision.status.as_ref().and_then(|next| {
        let phase = next.phase.filter(|p| p.is_finished())?;
        (next.finished_at != status.finished_at).then_some(phase)
    });
    if finished.is_some() {
        // The next run's trigger starts from a fresh look.
        breaches.remove(drill.uid().as_deref().unwrap_or_default());
    }
    apply(runtime, drill, contract.as_deref(), decision).await?;
    if let Some(phase) = finished {
        runtime.metrics.finished(drill, phase);
    }
    Ok(())
}

/// What Prometheus says of a drill's trigger: asked at most every [`TRIGGER_EVERY`].
async fn breach_of(
    prometheus: &Prometheus,
    drill: &ContractDrill,
    trigger: &crds::Trigger,
    breaches: &mut Breaches,
) -> Breach {
    let uid = drill.uid().unwrap_or_default();
    if let Some((at, breach)) = breaches.get(&uid)
        && at.elapsed() < TRIGGER_EVERY
    {
        return breach.clone();
    }
    let window = crds::duration::parse(&trigger.for_).unwrap_or(Duration::from_secs(300));
    let namespace = drill.namespace().unwrap_or_default();
    let breach = prometheus.breach(&namespace, &drill.spec.contract, window, trigger.sla_breach_ratio).await;
    tracing::debug!(drill = %drill.name_any(), %namespace, ?breach, "asked Prometheus for the trigger");
    breaches.insert(uid, (Instant::now(), breach.clone()));
    breach
}

async fn apply(
    runtime: &DrillRuntime,
    drill: &ContractDrill,
    contract: Option<&ChannelContract>,
    decision: Decision,
) -> Result<(), kube::Error> {
    let namespace = drill.namespace().unwrap_or_default();
    let params = PatchParams { field_manager: Some(MANAGER.to_owned()), ..PatchParams::default() };
    // The drill's own status goes last: whoever sees a drill finished also finds the contract's
    // `status.lastDrill` and the drill's Event already written. Should a write fail, the drill is still
    // Running and the next pass writes all three again.
    if let (Some(last), Some(contract)) = (&decision.last_drill, contract) {
        let api: Api<ChannelContract> = Api::namespaced(runtime.client.clone(), &namespace);
        let mut patch = serde_json::json!({ "status": { "lastDrill": last } });
        if last.phase == DrillPhase::Passed {
            patch["status"]["lastPassedDrillTime"] = serde_json::json!(last.time);
        }
        api.patch_status(&contract.name_any(), &params, &Patch::Merge(patch)).await?;
    }
    if let Some((warning, reason, note)) = decision.event {
        let recorder = Recorder::new(runtime.client.clone(), runtime.reporter.clone());
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_owned(),
            note: Some(note.chars().take(1024).collect()),
            action: "Drill".to_owned(),
            secondary: contract.map(|c| c.object_ref(&())),
        };
        if let Err(e) = recorder.publish(&event, &drill.object_ref(&())).await {
            tracing::warn!(error = %e, "cannot publish the drill's Event");
        }
    }
    if let Some(status) = &decision.status {
        let api: Api<ContractDrill> = Api::namespaced(runtime.client.clone(), &namespace);
        api.patch_status(&drill.name_any(), &params, &Patch::Merge(serde_json::json!({ "status": status }))).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drill(name: &str, contract: &str, started: i64, runs: i32) -> Arc<ContractDrill> {
        let mut d = ContractDrill::new(
            name,
            serde_json::from_value(serde_json::json!({
                "contract": contract, "fault": {"region": "gz", "abort": {}}, "duration": "60s",
                "expect": {"failoverWithin": "1s"}
            }))
            .expect("spec"),
        );
        d.metadata.namespace = Some("payments".into());
        d.status = Some(crds::ContractDrillStatus {
            phase: Some(DrillPhase::Running),
            runs,
            started_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::from_second(1_800_000_000 + started).expect("ts"),
            )),
            ..Default::default()
        });
        Arc::new(d)
    }

    #[test]
    fn one_fault_per_contract_while_its_drill_runs() {
        let at = |s: i64| Timestamp::from_second(1_800_000_000 + s).expect("ts");
        let drills = vec![drill("late", "pv", 10, 1), drill("first", "pv", 0, 3), drill("other", "shop", 30, 1)];
        let faults = faults_in_force(&drills, at(40));
        let pv = &faults[&ContractKey { namespace: "payments".into(), name: "pv".into() }];
        assert_eq!(pv.run, "payments/first/3", "the drill that started first");
        assert_eq!(faults.len(), 2);
        // Each ends with its own duration.
        assert_eq!(faults_in_force(&drills, at(65)).len(), 2, "late (until 70) and other (until 90)");
        assert_eq!(faults_in_force(&drills, at(80)).len(), 1);
        assert!(faults_in_force(&drills, at(95)).is_empty());
    }
}
