//! The hub's metrics (`/metrics`), per member and per propagated policy (names as labels, like
//! kube-state-metrics: a fleet has tens of members, not thousands). Series of a member or policy that is
//! gone are removed.
//!
//! - `csp_fleet_members`: member clusters registered (usable or not);
//! - `csp_fleet_member_up{cluster}`: 1 while the member's API server answers;
//! - `csp_fleet_member_last_contact_timestamp_seconds{cluster}`;
//! - `csp_fleet_member_syncs_total{cluster,result}` (`ok`, `error`: the member refused, `unreachable`)
//!   and `csp_fleet_sync_duration_seconds`;
//! - `csp_fleet_member_writes_total{cluster,action}` (`created`, `restored`: drift reverted, `deleted`);
//! - `csp_fleet_policy_clusters{policy}`, `csp_fleet_policy_compliant_clusters{policy}`,
//!   `csp_fleet_policy_unreachable_clusters{policy}`;
//! - `csp_fleet_member_policy_compliant{policy,cluster}` (0/1), `..._in_sync`, `..._matched`,
//!   `..._violations` and `csp_fleet_member_policy_compliance_ratio{policy,cluster}`;
//! - `csp_fleet_leader`: 1 while this replica runs the fleet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crds::FleetStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::rollup::Observation;
use super::sync::Changes;

/// `{cluster}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ClusterLabels {
    /// The member.
    pub cluster: String,
}

/// `{cluster,result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    /// The member.
    pub cluster: String,
    /// ok, error or unreachable.
    pub result: String,
}

/// `{cluster,action}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// The member.
    pub cluster: String,
    /// created, restored or deleted.
    pub action: String,
}

/// `{policy}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PolicyLabels {
    /// The hub's policy.
    pub policy: String,
}

/// `{policy,cluster}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct MemberPolicyLabels {
    /// The hub's policy.
    pub policy: String,
    /// The member.
    pub cluster: String,
}

/// Every metric of the hub.
#[derive(Debug)]
pub struct FleetMetrics {
    registry: Registry,
    members: Gauge,
    member_up: Family<ClusterLabels, Gauge>,
    last_contact: Family<ClusterLabels, Gauge<f64, AtomicU64>>,
    syncs: Family<PassLabels, Counter>,
    sync_duration: Histogram,
    writes: Family<WriteLabels, Counter>,
    policy_clusters: Family<PolicyLabels, Gauge>,
    policy_compliant: Family<PolicyLabels, Gauge>,
    policy_unreachable: Family<PolicyLabels, Gauge>,
    member_compliant: Family<MemberPolicyLabels, Gauge>,
    member_in_sync: Family<MemberPolicyLabels, Gauge>,
    member_matched: Family<MemberPolicyLabels, Gauge>,
    member_violations: Family<MemberPolicyLabels, Gauge>,
    member_ratio: Family<MemberPolicyLabels, Gauge<f64, AtomicU64>>,
    leader: Gauge,
    written: Mutex<(BTreeSet<PolicyLabels>, BTreeSet<MemberPolicyLabels>)>,
}

impl Default for FleetMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl FleetMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            members: Gauge::default(),
            member_up: Family::default(),
            last_contact: Family::default(),
            syncs: Family::default(),
            sync_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            writes: Family::default(),
            policy_clusters: Family::default(),
            policy_compliant: Family::default(),
            policy_unreachable: Family::default(),
            member_compliant: Family::default(),
            member_in_sync: Family::default(),
            member_matched: Family::default(),
            member_violations: Family::default(),
            member_ratio: Family::default(),
            leader: Gauge::default(),
            written: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register("csp_fleet_members", "Member clusters registered (usable or not)", m.members.clone());
        registry.register("csp_fleet_member_up", "1 while the member's API server answers", m.member_up.clone());
        registry.register(
            "csp_fleet_member_last_contact_timestamp_seconds",
            "When the member's API server last answered",
            m.last_contact.clone(),
        );
        registry.register("csp_fleet_member_syncs", "Sync passes per member, by result", m.syncs.clone());
        registry.register(
            "csp_fleet_sync_duration_seconds",
            "Time of one sync pass over a member",
            m.sync_duration.clone(),
        );
        registry.register(
            "csp_fleet_member_writes",
            "Policies the hub created, restored (drift) or deleted on a member",
            m.writes.clone(),
        );
        registry.register(
            "csp_fleet_policy_clusters",
            "Members a propagated policy goes to",
            m.policy_clusters.clone(),
        );
        registry.register(
            "csp_fleet_policy_compliant_clusters",
            "Members that comply with a propagated policy",
            m.policy_compliant.clone(),
        );
        registry.register(
            "csp_fleet_policy_unreachable_clusters",
            "Members of a propagated policy that do not answer",
            m.policy_unreachable.clone(),
        );
        registry.register(
            "csp_fleet_member_policy_compliant",
            "1 when the member complies with the policy (reachable, in sync, audited, no violation)",
            m.member_compliant.clone(),
        );
        registry.register(
            "csp_fleet_member_policy_in_sync",
            "1 when the member holds the hub's policy unchanged",
            m.member_in_sync.clone(),
        );
        registry.register(
            "csp_fleet_member_policy_matched",
            "Objects the policy matched on the member at its last audit",
            m.member_matched.clone(),
        );
        registry.register(
            "csp_fleet_member_policy_violations",
            "Matched objects that fall short on the member",
            m.member_violations.clone(),
        );
        registry.register(
            "csp_fleet_member_policy_compliance_ratio",
            "The share of matched objects that comply on the member (1 when none matched)",
            m.member_ratio.clone(),
        );
        registry.register("csp_fleet_leader", "1 while this replica runs the fleet", m.leader.clone());
        Self { registry, ..m }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Leadership.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The number of registered members.
    pub fn set_members(&self, n: usize) {
        self.members.set(n as i64);
    }

    /// One sync pass.
    pub fn record_pass(&self, cluster: &str, result: &str, changes: &Changes, took: Duration) {
        self.syncs.get_or_create(&PassLabels { cluster: cluster.into(), result: result.into() }).inc();
        self.sync_duration.observe(took.as_secs_f64());
        for (action, names) in
            [("created", &changes.created), ("restored", &changes.restored), ("deleted", &changes.deleted)]
        {
            if !names.is_empty() {
                self.writes
                    .get_or_create(&WriteLabels { cluster: cluster.into(), action: action.into() })
                    .inc_by(names.len() as u64);
            }
        }
    }

    /// A member's reachability.
    pub fn record_member(&self, cluster: &str, seen: &Observation) {
        let labels = ClusterLabels { cluster: cluster.into() };
        self.member_up.get_or_create(&labels).set(i64::from(seen.reachable));
        if let Some(t) = seen.last_contact {
            self.last_contact.get_or_create(&labels).set(t.as_millisecond() as f64 / 1000.0);
        }
    }

    /// A member is gone: its series too.
    pub fn forget_member(&self, cluster: &str) {
        let labels = ClusterLabels { cluster: cluster.into() };
        self.member_up.remove(&labels);
        self.last_contact.remove(&labels);
        for result in ["ok", "error", "unreachable"] {
            self.syncs.remove(&PassLabels { cluster: cluster.into(), result: result.into() });
        }
        for action in ["created", "restored", "deleted"] {
            self.writes.remove(&WriteLabels { cluster: cluster.into(), action: action.into() });
        }
    }

    /// The roll-up of every propagated policy; series of policies and members no longer in it go.
    pub fn record_rollup(&self, fleet: &BTreeMap<String, FleetStatus>) {
        let mut policies = BTreeSet::new();
        let mut pairs = BTreeSet::new();
        for (policy, status) in fleet {
            let p = PolicyLabels { policy: policy.clone() };
            self.policy_clusters.get_or_create(&p).set(status.clusters);
            self.policy_compliant.get_or_create(&p).set(status.compliant);
            self.policy_unreachable.get_or_create(&p).set(status.unreachable);
            policies.insert(p);
            for m in &status.members {
                let l = MemberPolicyLabels { policy: policy.clone(), cluster: m.cluster.clone() };
                self.member_compliant.get_or_create(&l).set(i64::from(m.compliant));
                self.member_in_sync.get_or_create(&l).set(i64::from(m.in_sync));
                self.member_matched.get_or_create(&l).set(m.matched);
                self.member_violations.get_or_create(&l).set(m.violations);
                let ratio = if m.matched == 0 { 1.0 } else { (m.matched - m.violations) as f64 / m.matched as f64 };
                self.member_ratio.get_or_create(&l).set(ratio);
                pairs.insert(l);
            }
        }
        let Ok(mut written) = self.written.lock() else { return };
        for gone in written.0.difference(&policies) {
            self.policy_clusters.remove(gone);
            self.policy_compliant.remove(gone);
            self.policy_unreachable.remove(gone);
        }
        for gone in written.1.difference(&pairs) {
            self.member_compliant.remove(gone);
            self.member_in_sync.remove(gone);
            self.member_matched.remove(gone);
            self.member_violations.remove(gone);
            self.member_ratio.remove(gone);
        }
        *written = (policies, pairs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::FleetMember;

    #[test]
    fn the_rollup_sets_series_per_policy_and_member_and_removes_those_gone() {
        let m = FleetMetrics::new();
        let member = |cluster: &str, compliant: bool| FleetMember {
            cluster: cluster.into(),
            reachable: true,
            in_sync: true,
            compliant,
            matched: 4,
            violations: i64::from(!compliant),
            ..Default::default()
        };
        let status = FleetStatus {
            summary: "1/2".into(),
            clusters: 2,
            compliant: 1,
            unreachable: 0,
            members: vec![member("m1", true), member("m2", false)],
        };
        m.record_rollup(&BTreeMap::from([("baseline".to_owned(), status)]));
        let text = m.encode();
        assert!(text.contains(r#"csp_fleet_policy_compliant_clusters{policy="baseline"} 1"#), "{text}");
        assert!(text.contains(r#"csp_fleet_member_policy_violations{policy="baseline",cluster="m2"} 1"#), "{text}");
        assert!(
            text.contains(r#"csp_fleet_member_policy_compliance_ratio{policy="baseline",cluster="m2"} 0.75"#),
            "{text}"
        );
        m.record_rollup(&BTreeMap::new());
        let text = m.encode();
        assert!(!text.contains(r#"policy="baseline""#), "a policy no longer propagated leaves no series: {text}");
        m.record_member("m1", &Observation { reachable: true, ..Default::default() });
        assert!(m.encode().contains(r#"csp_fleet_member_up{cluster="m1"} 1"#));
        m.forget_member("m1");
        assert!(!m.encode().contains(r#"cluster="m1""#));
    }
}
