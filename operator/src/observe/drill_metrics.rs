//! The drills and the contracts' conditions as Prometheus metrics, exported by the leader (the replica
//! that decides drills and writes the contracts' status); the chart's alerts and dashboard read them.
//!
//! - `csp_drill_runs_total{csp_namespace,csp_contract,drill,phase}`: finished runs by their phase
//!   (Passed, Failed, Aborted);
//! - `csp_drill_active{csp_namespace,csp_contract,drill}`: 1 while the drill runs, else 0;
//! - `csp_drill_switchover_seconds{…}`: the last run's switchover (when it measured one);
//! - `csp_drill_promised_seconds{…}`: the drill's `spec.expect.failoverWithin`;
//! - `csp_contract_condition{csp_namespace,csp_contract,condition}`: 1 when the contract's condition
//!   (Accepted, Programmed, Ready) is True, else 0.
//!
//! Per drill and per contract: the labels name objects (bounded by the objects the cluster has, like
//! kube-state-metrics' `kube_*` series), never an error's text.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use crds::{ContractDrill, DrillPhase};
use kube::ResourceExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// `{csp_namespace,csp_contract,drill,phase}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// The drill's namespace.
    pub csp_namespace: String,
    /// The contract it drills.
    pub csp_contract: String,
    /// The drill.
    pub drill: String,
    /// Passed, Failed or Aborted.
    pub phase: String,
}

/// What the gauges of one drill say.
#[derive(Clone, Debug, PartialEq)]
pub struct DrillRow {
    /// Namespace, contract, drill.
    pub key: (String, String, String),
    /// Whether it runs.
    pub active: bool,
    /// The last run's switchover, seconds.
    pub switchover: Option<f64>,
    /// The promise, seconds.
    pub promised: Option<f64>,
}

impl DrillRow {
    /// The row of a drill as it is now.
    pub fn of(drill: &ContractDrill) -> Self {
        let status = drill.status.as_ref();
        let seconds = |s: &str| crds::duration::parse(s).ok().map(|d| d.as_secs_f64());
        Self {
            key: (drill.namespace().unwrap_or_default(), drill.spec.contract.clone(), drill.name_any()),
            active: status.and_then(|s| s.phase) == Some(DrillPhase::Running),
            switchover: status.and_then(|s| s.switchover.as_deref()).and_then(seconds),
            promised: seconds(&drill.spec.expect.failover_within),
        }
    }
}

/// The leader's drill and contract metrics.
#[derive(Debug, Clone, Default)]
pub struct DrillMetrics {
    runs: Family<RunLabels, Counter>,
    gauges: Arc<Mutex<Gauges>>,
}

#[derive(Debug, Default)]
struct Gauges {
    drills: Vec<DrillRow>,
    /// Per contract: condition type -> True.
    conditions: BTreeMap<(String, String), BTreeMap<String, bool>>,
}

impl DrillMetrics {
    /// Registers the metrics.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "drill_runs",
            "Finished ContractDrill runs by phase (Passed, Failed, Aborted)",
            self.runs.clone(),
        );
        registry.register_collector(Box::new(GaugeCollector(self.gauges.clone())));
    }

    /// Counts a finished run.
    pub fn finished(&self, drill: &ContractDrill, phase: DrillPhase) {
        let labels = RunLabels {
            csp_namespace: drill.namespace().unwrap_or_default(),
            csp_contract: drill.spec.contract.clone(),
            drill: drill.name_any(),
            phase: format!("{phase:?}"),
        };
        self.runs.get_or_create(&labels).inc();
    }

    /// The drills as they are now (the leader, every tick); an empty list on a replica that does not lead.
    /// Every drill's run counters exist from when it is first seen, at 0, so that the first run counts in
    /// `increase()` (a counter that appears at 1 is invisible to it); a deleted drill's go.
    pub fn set_drills(&self, drills: Vec<DrillRow>) {
        let phases = [DrillPhase::Passed, DrillPhase::Failed, DrillPhase::Aborted];
        let labels = |(ns, contract, drill): &(String, String, String), phase: DrillPhase| RunLabels {
            csp_namespace: ns.clone(),
            csp_contract: contract.clone(),
            drill: drill.clone(),
            phase: format!("{phase:?}"),
        };
        let mut gauges = self.lock();
        for old in &gauges.drills {
            if !drills.iter().any(|d| d.key == old.key) {
                for phase in phases {
                    self.runs.remove(&labels(&old.key, phase));
                }
            }
        }
        for row in &drills {
            for phase in phases {
                let _ = self.runs.get_or_create(&labels(&row.key, phase));
            }
        }
        gauges.drills = drills;
    }

    /// A contract's conditions (None: the contract is gone, or this replica stopped leading).
    pub fn set_conditions(&self, namespace: &str, contract: &str, conditions: Option<BTreeMap<String, bool>>) {
        let key = (namespace.to_owned(), contract.to_owned());
        let mut gauges = self.lock();
        match conditions {
            Some(c) => {
                gauges.conditions.insert(key, c);
            }
            None => {
                gauges.conditions.remove(&key);
            }
        }
    }

    /// Forgets every contract's conditions (this replica no longer leads).
    pub fn clear_conditions(&self) {
        self.lock().conditions.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gauges> {
        self.gauges.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct GaugeCollector(Arc<Mutex<Gauges>>);

impl Collector for GaugeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauges = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let labels = |(ns, contract, drill): &(String, String, String)| {
            [("csp_namespace", ns.clone()), ("csp_contract", contract.clone()), ("drill", drill.clone())]
        };
        {
            let mut family = encoder.encode_descriptor(
                "drill_active",
                "1 while the ContractDrill runs (its fault is in the proxies), else 0",
                None,
                MetricType::Gauge,
            )?;
            for row in &gauges.drills {
                ConstGauge::new(i64::from(row.active)).encode(family.encode_family(&labels(&row.key))?)?;
            }
        }
        for (name, help, value) in [
            (
                "drill_switchover_seconds",
                "The switchover of the ContractDrill's last run, measured from the proxies' logs",
                (|r: &DrillRow| r.switchover) as fn(&DrillRow) -> Option<f64>,
            ),
            (
                "drill_promised_seconds",
                "The switchover the ContractDrill promises (spec.expect.failoverWithin)",
                |r: &DrillRow| r.promised,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for row in &gauges.drills {
                if let Some(v) = value(row) {
                    ConstGauge::new(v).encode(family.encode_family(&labels(&row.key))?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "contract_condition",
            "1 when the ChannelContract's condition (Accepted, Programmed, Ready) is True, else 0",
            None,
            MetricType::Gauge,
        )?;
        for ((ns, contract), conditions) in &gauges.conditions {
            for (condition, ok) in conditions {
                let l = [
                    ("csp_namespace", ns.clone()),
                    ("csp_contract", contract.clone()),
                    ("condition", condition.clone()),
                ];
                ConstGauge::new(i64::from(*ok)).encode(family.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(m: &DrillMetrics) -> String {
        let mut registry = Registry::with_prefix("csp");
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        out
    }

    #[test]
    fn drills_and_conditions_are_exported_with_their_names() {
        let m = DrillMetrics::default();
        let mut d = ContractDrill::new(
            "gz-outage",
            serde_json::from_value(serde_json::json!({
                "contract": "pay", "fault": {"region": "gz", "abort": {}}, "duration": "60s",
                "expect": {"failoverWithin": "1800ms"}
            }))
            .expect("spec"),
        );
        d.metadata.namespace = Some("payments".into());
        d.status = Some(crds::ContractDrillStatus {
            phase: Some(DrillPhase::Running),
            switchover: Some("63ms".into()),
            ..Default::default()
        });
        m.set_drills(vec![DrillRow::of(&d)]);
        m.finished(&d, DrillPhase::Failed);
        m.set_conditions("payments", "pay", Some([("Programmed".into(), true), ("Ready".into(), false)].into()));
        let text = encode(&m);
        let l = "csp_namespace=\"payments\",csp_contract=\"pay\",drill=\"gz-outage\"";
        for line in [
            format!("csp_drill_active{{{l}}} 1"),
            format!("csp_drill_switchover_seconds{{{l}}} 0.063"),
            format!("csp_drill_promised_seconds{{{l}}} 1.8"),
            format!("csp_drill_runs_total{{{l},phase=\"Failed\"}} 1"),
            "csp_contract_condition{csp_namespace=\"payments\",csp_contract=\"pay\",condition=\"Programmed\"} 1".into(),
            "csp_contract_condition{csp_namespace=\"payments\",csp_contract=\"pay\",condition=\"Ready\"} 0".into(),
        ] {
            assert!(text.contains(&line), "{line} in:\n{text}");
        }
        // The other phases' counters exist at 0 from the start.
        assert!(text.contains(&format!("csp_drill_runs_total{{{l},phase=\"Passed\"}} 0")), "{text}");
        m.set_conditions("payments", "pay", None);
        m.set_drills(Vec::new());
        let text = encode(&m);
        assert!(!text.contains("csp_contract_condition{") && !text.contains("csp_drill_active{"), "{text}");
        assert!(!text.contains("csp_drill_runs_total{"), "a deleted drill's counters go: {text}");
    }
}
