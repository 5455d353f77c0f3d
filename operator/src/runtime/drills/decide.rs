//! The pure decision of the drill controller: a ContractDrill, its contract, the time, what the proxies
//! logged and (for a trigger) what Prometheus says in; the drill's next status out. No client, no clock.

use std::time::Duration;

use crds::conditions::condition;
use crds::{ChannelContract, ContractDrill, ContractDrillStatus, DrillPhase, LastDrill, ProxySwitchover, ServedBy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::observe::drill::{DrillLog, Verdict, format_duration, judge, readiness};
use crate::observe::trigger::Breach;

/// After the fault is removed, the verdict waits this long for the last logs: the proxies flush their
/// access logs every second and the replicas report every second.
pub const SETTLE: Duration = Duration::from_secs(4);

/// Condition types of a drill.
pub mod condition_type {
    /// Whether the fault is in the proxies' configuration.
    pub const FAULT_ACTIVE: &str = "FaultActive";
    /// Whether the last run proved the promise.
    pub const SUCCEEDED: &str = "Succeeded";
    /// Whether the trigger would fire (drills with a trigger).
    pub const TRIGGERED: &str = "Triggered";
}

/// Reasons of a drill's conditions and Events.
pub mod reason {
    /// The spec breaks a rule.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The contract does not exist.
    pub const CONTRACT_NOT_FOUND: &str = "ContractNotFound";
    /// No proxy runs the contract's configuration.
    pub const NO_PROXY_SERVING: &str = "NoProxyServing";
    /// The fault hits nothing, or leaves nowhere to go.
    pub const NOT_READY: &str = "RegionsNotReady";
    /// Another drill of the same contract runs.
    pub const ANOTHER_DRILL: &str = "AnotherDrillRunning";
    /// The fault is in the proxies.
    pub const INJECTED: &str = "Injected";
    /// The fault was removed.
    pub const REMOVED: &str = "Removed";
    /// The proxies rejected the configuration with the fault.
    pub const FAULT_REJECTED: &str = "FaultRejected";
    /// The switchover was within the promise.
    pub const PASSED: &str = "SwitchoverWithinPromise";
    /// The switchover was late or missing.
    pub const FAILED: &str = "SwitchoverTooSlow";
    /// No request met the fault.
    pub const NO_TRAFFIC: &str = "NoTraffic";
    /// Waiting for the trigger.
    pub const WAITING: &str = "WaitingForTrigger";
    /// In the cool-down after a run.
    pub const COOLING_DOWN: &str = "CoolingDown";
    /// The trigger fired.
    pub const BREACHED: &str = "SLABreached";
    /// The trigger cannot be judged (no Prometheus).
    pub const NO_PROMETHEUS: &str = "PrometheusNotConfigured";
}

/// Everything the decision reads besides the drill.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The contract under test, if it exists.
    pub contract: Option<&'a ChannelContract>,
    /// Whether another drill of the same contract runs.
    pub another_running: bool,
    /// What the proxies logged for the current run (all replicas merged).
    pub log: Option<&'a DrillLog>,
    /// For a drill with a trigger that may fire: what Prometheus says (None: not asked, no Prometheus).
    pub breach: Option<Breach>,
    /// The time.
    pub now: Timestamp,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The drill's next status (None: leave it as it is).
    pub status: Option<ContractDrillStatus>,
    /// The contract's `status.lastDrill` to write, when a run finished.
    pub last_drill: Option<LastDrill>,
    /// An Event: (warning, reason, note).
    pub event: Option<(bool, &'static str, String)>,
    /// When to look again (None: only on a change).
    pub requeue: Option<Duration>,
}

impl Decision {
    fn wait(after: Duration) -> Self {
        Self { status: None, last_drill: None, event: None, requeue: Some(after) }
    }
}

/// The run key of a drill's run: `<namespace>/<name>/<run>` (the `x-csp-drill` header's value).
pub fn run_key(drill: &ContractDrill, run: i32) -> String {
    format!(
        "{}/{}/{run}",
        drill.metadata.namespace.as_deref().unwrap_or_default(),
        drill.metadata.name.as_deref().unwrap_or_default()
    )
}

/// When a running drill's fault ends (`startedAt + duration`).
pub fn fault_ends(drill: &ContractDrill) -> Option<Timestamp> {
    let status = drill.status.as_ref()?;
    if status.phase != Some(DrillPhase::Running) {
        return None;
    }
    let started = status.started_at.as_ref()?.0;
    let length = crds::duration::parse(&drill.spec.duration).ok()?;
    started.checked_add(k8s_openapi::jiff::SignedDuration::try_from(length).ok()?).ok()
}

/// Whether a drill's fault is in force at `now`: it runs, has not been deleted, and its duration has not
/// passed. Every replica reads the same drills, so every replica serves the same faults.
pub fn fault_in_force(drill: &ContractDrill, now: Timestamp) -> bool {
    drill.metadata.deletion_timestamp.is_none() && fault_ends(drill).is_some_and(|end| now < end)
}

fn seconds(d: Duration) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::try_from(d).unwrap_or_default()
}

/// Decides a drill's next step.
pub fn decide(drill: &ContractDrill, inputs: &Inputs<'_>) -> Decision {
    let current = drill.status.clone().unwrap_or_default();
    let now = Time(inputs.now);
    let generation = drill.metadata.generation;
    let previous = current.conditions.clone();
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(type_, ok, reason, message, generation, &previous, &now)
    };
    let set = |status: &mut ContractDrillStatus, c: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition| {
        status.conditions.retain(|x| x.type_ != c.type_);
        status.conditions.push(c);
        status.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    };
    let mut next = current.clone();
    next.observed_generation = generation;
    next.fault_summary = Some(drill.spec.fault.summary());

    let abort = |mut next: ContractDrillStatus, why: &'static str, message: String| {
        next.phase = Some(DrillPhase::Aborted);
        next.finished_at = Some(now.clone());
        set(&mut next, cond(condition_type::FAULT_ACTIVE, false, why, "no fault is in the proxies".into()));
        set(&mut next, cond(condition_type::SUCCEEDED, false, why, message.clone()));
        Decision {
            last_drill: (current.phase == Some(DrillPhase::Running)).then(|| last_drill(drill, &next)),
            status: Some(next),
            event: Some((true, "DrillAborted", message)),
            requeue: None,
        }
    };

    if let Err(e) = crds::validate::drill(&drill.spec) {
        if current.phase == Some(DrillPhase::Aborted) {
            return Decision::idle();
        }
        return abort(next, reason::INVALID_SPEC, e.to_string());
    }

    match current.phase.unwrap_or_default() {
        DrillPhase::Running => running(drill, inputs, next, &cond, &set, abort),
        phase if phase.is_finished() && drill.spec.trigger.is_none() => Decision::idle(),
        _ => {
            // Pending, or finished with a trigger: is it time to run?
            if let Some(trigger) = &drill.spec.trigger {
                let cooldown = crds::duration::parse(&trigger.cooldown).unwrap_or(Duration::from_secs(3600));
                if let Some(finished) = current.finished_at.as_ref().map(|t| t.0)
                    && inputs.now < finished.checked_add(seconds(cooldown)).unwrap_or(finished)
                {
                    let until = finished.checked_add(seconds(cooldown)).unwrap_or(finished);
                    let c = cond(
                        condition_type::TRIGGERED,
                        false,
                        reason::COOLING_DOWN,
                        format!("the trigger is judged again after {until}"),
                    );
                    return only_conditions(&current, next, c, &set, until.duration_since(inputs.now).unsigned_abs());
                }
                match &inputs.breach {
                    None => {
                        let c = cond(
                            condition_type::TRIGGERED,
                            false,
                            reason::NO_PROMETHEUS,
                            "the operator has no --prometheus-url: it cannot read the SLA breach ratio that the trigger needs".into(),
                        );
                        return only_conditions(&current, next, c, &set, Duration::from_secs(60));
                    }
                    Some(Breach::Not(why)) => {
                        let c = cond(
                            condition_type::TRIGGERED,
                            false,
                            reason::WAITING,
                            format!(
                                "the SLA breach ratio has not stayed above {} for {}: {why}",
                                trigger.sla_breach_ratio, trigger.for_
                            ),
                        );
                        if next.phase.is_none() {
                            next.phase = Some(DrillPhase::Pending);
                        }
                        return only_conditions(&current, next, c, &set, Duration::from_secs(15));
                    }
                    Some(Breach::Sustained { lowest }) => {
                        set(
                            &mut next,
                            cond(
                                condition_type::TRIGGERED,
                                true,
                                reason::BREACHED,
                                format!(
                                    "the SLA breach ratio stayed above {} for {} (lowest {lowest:.4})",
                                    trigger.sla_breach_ratio, trigger.for_
                                ),
                            ),
                        );
                        next.triggered_at = Some(now.clone());
                    }
                }
            }
            start(drill, inputs, next, &cond, &set, abort)
        }
    }
}

impl Decision {
    /// Nothing to do until the drill changes.
    fn idle() -> Self {
        Self { status: None, last_drill: None, event: None, requeue: None }
    }
}

fn only_conditions(
    current: &ContractDrillStatus,
    mut next: ContractDrillStatus,
    c: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
    set: &impl Fn(&mut ContractDrillStatus, k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition),
    requeue: Duration,
) -> Decision {
    set(&mut next, c);
    let changed = strip_times(&next) != strip_times(current);
    Decision { status: changed.then_some(next), last_drill: None, event: None, requeue: Some(requeue) }
}

fn strip_times(s: &ContractDrillStatus) -> ContractDrillStatus {
    let mut s = s.clone();
    for c in &mut s.conditions {
        c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
    }
    s
}

type Cond<'a> = dyn Fn(&str, bool, &str, String) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition + 'a;

fn start(
    drill: &ContractDrill,
    inputs: &Inputs<'_>,
    mut next: ContractDrillStatus,
    cond: &Cond<'_>,
    set: &impl Fn(&mut ContractDrillStatus, k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition),
    abort: impl FnOnce(ContractDrillStatus, &'static str, String) -> Decision,
) -> Decision {
    let Some(contract) = inputs.contract else {
        return abort(
            next,
            reason::CONTRACT_NOT_FOUND,
            format!("ChannelContract {:?} does not exist in this namespace", drill.spec.contract),
        );
    };
    if inputs.another_running {
        next.phase = Some(DrillPhase::Pending);
        set(
            &mut next,
            cond(
                condition_type::FAULT_ACTIVE,
                false,
                reason::ANOTHER_DRILL,
                format!("another drill of {} runs; this one starts when it ends", drill.spec.contract),
            ),
        );
        return Decision { status: Some(next), last_drill: None, event: None, requeue: Some(Duration::from_secs(5)) };
    }
    let acked = contract.status.as_ref().and_then(|s| s.proxies.as_ref()).map_or(0, |p| p.acked);
    if acked == 0 {
        return abort(
            next,
            reason::NO_PROXY_SERVING,
            format!(
                "no proxy runs ChannelContract {}'s configuration over xDS (status.proxies.acked is 0): a drill needs proxies to put its fault in",
                drill.spec.contract
            ),
        );
    }
    if let Err(why) = readiness(&contract.spec, contract.status.as_ref(), &drill.spec.fault) {
        return abort(next, reason::NOT_READY, why);
    }
    next.phase = Some(DrillPhase::Running);
    next.runs += 1;
    next.started_at = Some(Time(inputs.now));
    next.finished_at = None;
    next.switchover = None;
    next.proxies.clear();
    next.served_by.clear();
    next.failed_requests = None;
    let message = format!(
        "the fault ({}) is in the proxies of {} for {}",
        drill.spec.fault.summary(),
        drill.spec.contract,
        drill.spec.duration
    );
    set(&mut next, cond(condition_type::FAULT_ACTIVE, true, reason::INJECTED, message.clone()));
    let length = crds::duration::parse(&drill.spec.duration).unwrap_or_default();
    Decision {
        status: Some(next),
        last_drill: None,
        event: Some((false, "DrillStarted", message)),
        requeue: Some(length + SETTLE),
    }
}

fn running(
    drill: &ContractDrill,
    inputs: &Inputs<'_>,
    mut next: ContractDrillStatus,
    cond: &Cond<'_>,
    set: &impl Fn(&mut ContractDrillStatus, k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition),
    abort: impl FnOnce(ContractDrillStatus, &'static str, String) -> Decision,
) -> Decision {
    let Some(contract) = inputs.contract else {
        return abort(
            next,
            reason::CONTRACT_NOT_FOUND,
            format!("ChannelContract {:?} was deleted during the drill", drill.spec.contract),
        );
    };
    let started = next.started_at.as_ref().map_or(inputs.now, |t| t.0);
    let rejection = contract.status.as_ref().and_then(|s| {
        let programmed = s.conditions.iter().find(|c| c.type_ == "Programmed")?;
        (programmed.status == "False"
            && programmed.reason == "ProxyRejected"
            && programmed.last_transition_time.0 >= started)
            .then(|| programmed.message.clone())
    });
    if let Some(message) = rejection {
        return abort(
            next,
            reason::FAULT_REJECTED,
            format!("the proxies rejected the configuration with the fault, so it was withdrawn: {message}"),
        );
    }
    let Some(ends) = fault_ends(drill) else { return Decision::wait(Duration::from_secs(1)) };
    let judge_at = ends.checked_add(seconds(SETTLE)).unwrap_or(ends);
    if inputs.now < judge_at {
        return Decision::wait(judge_at.duration_since(inputs.now).unsigned_abs().max(Duration::from_millis(200)));
    }
    let promise = crds::duration::parse(&drill.spec.expect.failover_within).unwrap_or_default();
    let empty = DrillLog::default();
    let log = inputs.log.unwrap_or(&empty);
    next.finished_at = Some(Time(inputs.now));
    next.proxies = log
        .proxies
        .iter()
        .take(64)
        .map(|(proxy, p)| ProxySwitchover {
            proxy: proxy.clone(),
            switchover: p.switchover().map(format_duration),
            requests: p.tries,
        })
        .collect();
    next.served_by = log
        .served_by()
        .into_iter()
        .take(64)
        .map(|(s, n)| ServedBy { channel: s.channel, region: s.region, faulted: s.faulted, requests: n })
        .collect();
    next.failed_requests = Some(log.failed_tries);
    set(
        &mut next,
        cond(
            condition_type::FAULT_ACTIVE,
            false,
            reason::REMOVED,
            format!("the fault was removed after {}", drill.spec.duration),
        ),
    );
    let (phase, ok, why, message, warning, event) = match judge(log, promise) {
        Verdict::Passed { switchover } => {
            next.switchover = Some(format_duration(switchover));
            (
                DrillPhase::Passed,
                true,
                reason::PASSED,
                format!(
                    "traffic moved to another region or channel within {} on every proxy that met the fault (promised {})",
                    format_duration(switchover),
                    drill.spec.expect.failover_within
                ),
                false,
                "DrillPassed",
            )
        }
        Verdict::Failed { switchover, message } => {
            next.switchover = switchover.map(format_duration);
            (DrillPhase::Failed, false, reason::FAILED, message, true, "DrillFailed")
        }
        Verdict::NoTraffic => (
            DrillPhase::Aborted,
            false,
            reason::NO_TRAFFIC,
            format!(
                "no request of {} met the fault during the {} it lasted, so nothing was proven: send traffic through the contract while a drill runs",
                drill.spec.contract, drill.spec.duration
            ),
            true,
            "DrillAborted",
        ),
    };
    next.phase = Some(phase);
    set(&mut next, cond(condition_type::SUCCEEDED, ok, why, message.clone()));
    let last = last_drill(drill, &next);
    Decision { status: Some(next), last_drill: Some(last), event: Some((warning, event, message)), requeue: None }
}

fn last_drill(drill: &ContractDrill, status: &ContractDrillStatus) -> LastDrill {
    LastDrill {
        name: drill.metadata.name.clone().unwrap_or_default(),
        time: status.finished_at.clone().unwrap_or(Time(Timestamp::UNIX_EPOCH)),
        phase: status.phase.unwrap_or_default(),
        switchover: status.switchover.clone(),
        promised: Some(drill.spec.expect.failover_within.clone()),
    }
}

#[cfg(test)]
mod tests;
