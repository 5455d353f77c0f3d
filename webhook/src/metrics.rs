//! Prometheus metrics (`/metrics`). Labels are bounded: kinds, operations, decisions, reasons, and
//! policy names (cluster-scoped objects that administrators create, a handful per cluster).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of an admission request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Service, ChannelContract or other.
    pub kind: String,
    /// CREATE, UPDATE, DELETE, CONNECT or unknown.
    pub operation: String,
    /// allow, deny or warn.
    pub decision: String,
}

/// Labels of one policy's verdict at admission.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// The policy's name.
    pub policy: String,
    /// Service or ChannelContract.
    pub kind: String,
    /// Deny, Warn or Audit.
    pub action: String,
}

/// A policy's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// The policy's name.
    pub policy: String,
}

/// A reason (bad requests, audit results).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: String,
}

/// Every metric of the webhook.
#[derive(Debug)]
pub struct Metrics {
    /// `csp_admission_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `csp_admission_policy_verdicts_total`.
    pub verdicts: Family<VerdictLabels, Counter>,
    /// `csp_admission_bad_requests_total`.
    pub bad_requests: Family<ReasonLabels, Counter>,
    /// `csp_admission_duration_seconds`.
    pub duration: Histogram,
    /// `csp_policy_matched`.
    pub policy_matched: Family<PolicyLabels, Gauge>,
    /// `csp_policy_violations`.
    pub policy_violations: Family<PolicyLabels, Gauge>,
    /// `csp_policy_compliance_ratio`.
    pub policy_compliance: Family<PolicyLabels, Gauge<f64, AtomicU64>>,
    /// `csp_audit_runs_total`.
    pub audit_runs: Family<ReasonLabels, Counter>,
    /// `csp_audit_leader`: 1 while this replica is the one that audits and writes audit status.
    pub audit_leader: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let verdicts = Family::<VerdictLabels, Counter>::default();
        let bad_requests = Family::<ReasonLabels, Counter>::default();
        // 50µs .. ~1.6s
        let duration = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 16));
        let policy_matched = Family::<PolicyLabels, Gauge>::default();
        let policy_violations = Family::<PolicyLabels, Gauge>::default();
        let policy_compliance = Family::<PolicyLabels, Gauge<f64, AtomicU64>>::default();
        let audit_runs = Family::<ReasonLabels, Counter>::default();
        let audit_leader = Gauge::default();
        let mut registry = Registry::with_prefix("csp");
        registry.register("admission_requests", "Admission requests by kind, operation and decision", requests.clone());
        registry.register(
            "admission_policy_verdicts",
            "Admission requests that fell short of a policy, by policy, kind and action",
            verdicts.clone(),
        );
        registry.register(
            "admission_bad_requests",
            "Requests that were not a readable AdmissionReview, by reason",
            bad_requests.clone(),
        );
        registry.register("admission_duration_seconds", "Time to answer an admission request", duration.clone());
        registry.register(
            "policy_matched",
            "Existing objects a policy matched at the last audit",
            policy_matched.clone(),
        );
        registry.register(
            "policy_violations",
            "Matched objects that fall short of a policy at the last audit",
            policy_violations.clone(),
        );
        registry.register(
            "policy_compliance_ratio",
            "Share of matched objects that comply with a policy at the last audit (0..1)",
            policy_compliance.clone(),
        );
        registry.register("audit_runs", "Audit runs by result", audit_runs.clone());
        registry.register(
            "audit_leader",
            "1 while this replica is the one that audits and writes policies' audit status",
            audit_leader.clone(),
        );
        Self {
            requests,
            verdicts,
            bad_requests,
            duration,
            policy_matched,
            policy_violations,
            policy_compliance,
            audit_runs,
            audit_leader,
            registry,
        }
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Forgets the gauges of policies this replica no longer audits.
    pub fn forget_policies(&self, policies: &[String]) {
        for p in policies {
            self.forget_policy(p);
        }
    }

    /// Forgets the gauges of a policy that no longer exists.
    pub fn forget_policy(&self, policy: &str) {
        let l = PolicyLabels { policy: policy.to_owned() };
        self.policy_matched.remove(&l);
        self.policy_violations.remove(&l);
        self.policy_compliance.remove(&l);
    }
}
