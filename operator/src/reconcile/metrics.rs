//! Prometheus metrics of the operator (`/metrics`). Labels are bounded: a reconcile's result, a
//! condition's type and status; never an object's name or an error's text.
//!
//! - `csp_operator_reconciles_total{result}`: `ok` (programmed), `invalid_input` (a condition says what
//!   to fix; the controller waits for a change), `error` (transient; retried with back-off);
//! - `csp_operator_reconcile_duration_seconds`: time of one reconcile;
//! - `csp_operator_contracts{condition,status}`: contracts by condition type and status;
//! - `csp_operator_leader`: 1 while this instance reconciles (leader, or leader election off);
//! - the xDS server's: `csp_xds_connected_proxies`, `csp_xds_push_duration_seconds`,
//!   `csp_xds_nacks_total{contract}` ([`XdsMetrics`]);
//! - per drill and per contract (names as labels, like kube-state-metrics; [`DrillMetrics`]):
//!   `csp_drill_runs_total`, `csp_drill_active`, `csp_drill_switchover_seconds`,
//!   `csp_drill_promised_seconds`, `csp_contract_condition`.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::status::condition;
use crate::observe::drill_metrics::DrillMetrics;
use crate::publish::xds::metrics::XdsMetrics;
use crate::watch::index::ContractKey;

/// The result of a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileResult {
    /// Programmed.
    Ok,
    /// Input the user must fix.
    InvalidInput,
    /// A transient failure.
    Error,
}

impl ReconcileResult {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::InvalidInput => "invalid_input",
            Self::Error => "error",
        }
    }
}

/// `{result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// ok, invalid_input or error.
    pub result: String,
}

/// `{condition,status}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    /// Accepted, Programmed or Ready.
    pub condition: String,
    /// True, False or Unknown.
    pub status: String,
}

/// Every metric of the operator.
#[derive(Debug)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    duration: Histogram,
    contracts: Family<ConditionLabels, Gauge>,
    leader: Gauge,
    /// The condition statuses of every contract, to count them: per type of [`condition::ALL`], the
    /// index of its status in [`STATUSES`] ([`NOT_COUNTED`] for none or another).
    statuses: Mutex<HashMap<ContractKey, [u8; 3]>>,
    /// The xDS server's metrics.
    pub xds: XdsMetrics,
    /// The drills' and the contracts' conditions, per object.
    pub drills: DrillMetrics,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

const STATUSES: [&str; 3] = ["True", "False", "Unknown"];
/// A condition that is missing or has another status than [`STATUSES`].
const NOT_COUNTED: u8 = u8::MAX;

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let reconciles = Family::<ResultLabels, Counter>::default();
        // 1ms .. ~16s
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let contracts = Family::<ConditionLabels, Gauge>::default();
        let leader = Gauge::default();
        let mut registry = Registry::with_prefix("csp");
        registry.register("operator_reconciles", "ChannelContract reconciles by result", reconciles.clone());
        registry.register(
            "operator_reconcile_duration_seconds",
            "Time to reconcile one ChannelContract",
            duration.clone(),
        );
        registry.register("operator_contracts", "ChannelContracts by condition and status", contracts.clone());
        registry.register(
            "operator_leader",
            "Whether this instance reconciles: 1 when it leads (or leader election is off), else 0",
            leader.clone(),
        );
        // Every series exists from the start, at 0.
        for result in [ReconcileResult::Ok, ReconcileResult::InvalidInput, ReconcileResult::Error] {
            let _ = reconciles.get_or_create(&ResultLabels { result: result.label().to_owned() });
        }
        for type_ in condition::ALL {
            for status in STATUSES {
                let labels = ConditionLabels { condition: type_.to_owned(), status: status.to_owned() };
                let _ = contracts.get_or_create(&labels);
            }
        }
        let xds = XdsMetrics::default();
        xds.register(&mut registry);
        let drills = DrillMetrics::default();
        drills.register(&mut registry);
        Self { reconciles, duration, contracts, leader, statuses: Mutex::default(), xds, drills, registry }
    }

    /// Counts one reconcile and its duration.
    pub fn reconciled(&self, result: ReconcileResult, seconds: f64) {
        self.reconciles.get_or_create(&ResultLabels { result: result.label().to_owned() }).inc();
        self.duration.observe(seconds);
    }

    /// Records a contract's conditions.
    ///
    /// The gauges move by the difference to what was recorded for the contract before (O(1) per call: with
    /// thousands of contracts, recounting them all on every reconcile was quadratic), under the same lock
    /// as the map, so that they always equal a count over it.
    pub fn record_conditions(&self, key: &ContractKey, conditions: &[Condition]) {
        let each = conditions.iter().map(|c| (c.type_.clone(), c.status == "True")).collect();
        self.drills.set_conditions(&key.namespace, &key.name, Some(each));
        let statuses = condition::ALL.map(|type_| {
            conditions
                .iter()
                .find(|c| c.type_ == type_)
                .and_then(|c| STATUSES.iter().position(|s| *s == c.status))
                .and_then(|i| u8::try_from(i).ok())
                .unwrap_or(NOT_COUNTED)
        });
        let mut all = self.statuses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if all.get(key) == Some(&statuses) {
            return;
        }
        self.count(statuses, 1);
        if let Some(old) = all.insert(key.clone(), statuses) {
            self.count(old, -1);
        }
    }

    /// Forgets a deleted contract.
    pub fn forget(&self, key: &ContractKey) {
        self.drills.set_conditions(&key.namespace, &key.name, None);
        let mut all = self.statuses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = all.remove(key) {
            self.count(old, -1);
        }
    }

    /// Adds `by` to the gauge of each (condition, status) of one contract.
    fn count(&self, statuses: [u8; 3], by: i64) {
        for (type_, status) in condition::ALL.iter().zip(statuses) {
            if let Some(status) = STATUSES.get(usize::from(status)) {
                let labels = ConditionLabels { condition: (*type_).to_owned(), status: (*status).to_owned() };
                self.contracts.get_or_create(&labels).inc_by(by);
            }
        }
    }

    /// Whether this instance reconciles.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn cond(type_: &str, status: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        }
    }

    fn key(name: &str) -> ContractKey {
        ContractKey { namespace: "ns".into(), name: name.into() }
    }

    #[test]
    fn contracts_are_counted_by_condition_and_forgotten() {
        let m = Metrics::new();
        m.record_conditions(&key("a"), &[cond("Ready", "True"), cond("Programmed", "True")]);
        m.record_conditions(&key("b"), &[cond("Ready", "False"), cond("Programmed", "True")]);
        m.record_conditions(&key("a"), &[cond("Ready", "False"), cond("Programmed", "True")]);
        let text = m.encode();
        assert!(text.contains("csp_operator_contracts{condition=\"Ready\",status=\"False\"} 2"), "{text}");
        assert!(text.contains("csp_operator_contracts{condition=\"Ready\",status=\"True\"} 0"), "{text}");
        assert!(text.contains("csp_operator_contracts{condition=\"Programmed\",status=\"True\"} 2"), "{text}");
        m.forget(&key("b"));
        assert!(m.encode().contains("csp_operator_contracts{condition=\"Ready\",status=\"False\"} 1"));
    }

    #[test]
    fn the_gauges_always_equal_a_count_over_every_contract() {
        let m = Metrics::new();
        let statuses = ["True", "False", "Unknown", "Bogus"];
        let mut expected: BTreeMap<ContractKey, Vec<Condition>> = BTreeMap::new();
        for step in 0..200usize {
            let k = key(&format!("c{}", step % 7));
            if step % 11 == 10 {
                m.forget(&k);
                expected.remove(&k);
                continue;
            }
            let conditions: Vec<Condition> = condition::ALL
                .iter()
                .enumerate()
                .map(|(i, t)| cond(t, statuses[(step / 3 + i * step) % statuses.len()]))
                .collect();
            m.record_conditions(&k, &conditions);
            expected.insert(k, conditions);
        }
        let text = m.encode();
        for type_ in condition::ALL {
            for status in STATUSES {
                let n = expected.values().flatten().filter(|c| c.type_ == type_ && c.status == status).count();
                let line = format!("csp_operator_contracts{{condition=\"{type_}\",status=\"{status}\"}} {n}\n");
                assert!(text.contains(&line), "{line} in {text}");
            }
        }
        assert!(!text.contains("Bogus"), "{text}");
    }

    #[test]
    fn reconciles_are_counted_by_result_with_their_latency() {
        let m = Metrics::new();
        m.reconciled(ReconcileResult::Ok, 0.01);
        m.reconciled(ReconcileResult::Error, 0.02);
        let text = m.encode();
        assert!(text.contains("csp_operator_reconciles_total{result=\"ok\"} 1"), "{text}");
        assert!(text.contains("csp_operator_reconciles_total{result=\"invalid_input\"} 0"), "{text}");
        assert!(text.contains("csp_operator_reconcile_duration_seconds_count 2"), "{text}");
    }
}
