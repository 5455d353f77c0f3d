//! The xDS server's metrics: `csp_xds_connected_proxies`, `csp_xds_push_duration_seconds` (from a
//! contract's new version to every proxy that serves its namespace running it), `csp_xds_nacks_total{contract}`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::ContractKey;

/// `{contract}`: `<namespace>/<name>`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContractLabels {
    /// `<namespace>/<name>`.
    pub contract: String,
}

/// The xDS server's metrics (clones share the series).
#[derive(Debug, Clone)]
pub struct XdsMetrics {
    /// Proxies connected to this replica.
    pub connected: Gauge,
    /// Change to all-ACKed.
    pub push_duration: Histogram,
    nacks: Family<ContractLabels, Counter>,
    /// Every contract's SLO, from the proxies' access logs.
    pub slo: std::sync::Arc<crate::observe::slo::SloMetrics>,
}

impl Default for XdsMetrics {
    fn default() -> Self {
        Self {
            connected: Gauge::default(),
            // 5ms .. ~80s
            push_duration: Histogram::new(exponential_buckets(0.005, 2.0, 15)),
            nacks: Family::default(),
            slo: std::sync::Arc::default(),
        }
    }
}

impl XdsMetrics {
    /// Registers them (the registry has the `csp` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "xds_connected_proxies",
            "Proxies connected to this replica's xDS server",
            self.connected.clone(),
        );
        registry.register(
            "xds_push_duration_seconds",
            "Time from a contract's new version to every proxy that serves its namespace running it",
            self.push_duration.clone(),
        );
        registry.register(
            "xds_nacks",
            "Rejections (NACKs) of a contract's configuration by a proxy",
            self.nacks.clone(),
        );
        registry.register_collector(Box::new(self.slo.clone()));
    }

    /// Counts a rejection of a contract.
    pub fn nack(&self, key: &ContractKey) {
        self.nacks.get_or_create(&ContractLabels { contract: key.to_string() }).inc();
    }
}
