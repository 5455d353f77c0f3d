//! Every contract's SLO from the proxies' access logs, as Prometheus metrics:
//!
//! - `csp_contract_requests_total{csp_namespace, csp_contract, csp_channel, csp_region, csp_fallback,
//!   csp_outcome}`: one per request through a contract's proxy. `csp_channel` and `csp_region` name the
//!   endpoint that answered it (empty when none did), `csp_fallback` whether that channel is a fallback (not
//!   the contract's first), `csp_outcome` is `ok` (answered, not 5xx, within `sla.maxLatency`), `slow`
//!   (answered, not 5xx, later than `sla.maxLatency`) or `failed` (5xx, reset, timed out, no answer).
//! - `csp_contract_request_duration_seconds{…}`: a histogram of the same requests, whose buckets include
//!   each contract's `sla.maxLatency` exactly: `le="<maxLatency>"` is the SLA, not an interpolation.
//! - `csp_contract_sla_objective` and `csp_contract_sla_max_latency_seconds` per contract, for the
//!   alerting rules to compare against.
//! - `csp_access_logs_dropped_total{reason}`: access log entries that could not be attributed.
//!
//! Every replica counts the logs of the proxies connected to it: sum across replicas.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The bucket boundaries of every contract's histogram (seconds), to which its `sla.maxLatency` is added.
pub const LADDER: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// One request, as the connection manager's access log reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestLog {
    /// The name of the route that took it (`csp~<ns>~<name>[~<channel>]`).
    pub route: String,
    /// The channel of the endpoint that answered (the endpoint's metadata), if any.
    pub channel: Option<String>,
    /// That endpoint's region, if any.
    pub region: Option<String>,
    /// Whether that channel is a fallback.
    pub fallback: bool,
    /// The status sent to the client; 0 when none was.
    pub status: u32,
    /// From the first byte received from the client to the last byte sent to it.
    pub duration: Duration,
    /// Whether the route's timeout (the SLA) fired.
    pub timed_out: bool,
}

/// How a request fared against its contract's SLA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Answered, not 5xx, within `sla.maxLatency`.
    Ok,
    /// Answered, not 5xx, later than `sla.maxLatency`.
    Slow,
    /// A 5xx, a reset, a timeout or no answer at all.
    Failed,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Slow, Outcome::Failed];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Slow => "slow",
            Self::Failed => "failed",
        }
    }

    /// Whether the request breached the SLA.
    pub fn breached(self) -> bool {
        self != Self::Ok
    }
}

/// Judges one request against `max_latency`.
pub fn outcome(log: &RequestLog, max_latency: Duration) -> Outcome {
    if log.status == 0 || log.status >= 500 || log.timed_out {
        Outcome::Failed
    } else if log.duration > max_latency {
        Outcome::Slow
    } else {
        Outcome::Ok
    }
}

/// What a contract promises, as the metrics need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `sla.maxLatency`.
    pub max_latency: Duration,
    /// `sla.objective` (default applied).
    pub objective: f64,
}

impl Target {
    /// The histogram's upper bounds: [`LADDER`] with `max_latency` in it.
    pub fn buckets(&self) -> Vec<f64> {
        let sla = self.max_latency.as_secs_f64();
        let mut b: Vec<f64> = LADDER.iter().copied().filter(|v| (v - sla).abs() > 1e-12).collect();
        b.push(sla);
        b.sort_by(f64::total_cmp);
        b
    }
}

/// Why a log entry was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dropped {
    /// The route is not a contract's.
    NotAContract,
    /// The contract is not known (deleted, or not yet seen by this replica).
    UnknownContract,
}

impl Dropped {
    fn label(self) -> &'static str {
        match self {
            Self::NotAContract => "not_a_contract",
            Self::UnknownContract => "unknown_contract",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SeriesKey {
    namespace: String,
    contract: String,
    channel: String,
    region: String,
    fallback: bool,
}

#[derive(Debug, Clone, Default)]
struct Series {
    outcomes: [u64; 3],
    /// Per upper bound of the contract's buckets (not cumulative), then the overflow.
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    targets: HashMap<(String, String), (Target, Vec<f64>)>,
    series: BTreeMap<SeriesKey, Series>,
    dropped: BTreeMap<Dropped, u64>,
}

/// The SLO metrics of every contract this replica knows.
#[derive(Debug, Default)]
pub struct SloMetrics {
    inner: Mutex<Inner>,
}

impl SloMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets what a contract promises. A change of `maxLatency` starts its histograms over with the new
    /// buckets (Prometheus sees a counter reset).
    pub fn set_target(&self, namespace: &str, name: &str, target: Target) {
        let mut inner = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let latency_changed = inner.targets.get(&key).is_some_and(|(t, _)| t.max_latency != target.max_latency);
        if latency_changed {
            inner.series.retain(|k, _| !(k.namespace == namespace && k.contract == name));
        }
        let buckets = target.buckets();
        inner.targets.insert(key, (target, buckets));
    }

    /// Forgets a deleted contract and its series.
    pub fn forget(&self, namespace: &str, name: &str) {
        let mut inner = self.lock();
        inner.targets.remove(&(namespace.to_owned(), name.to_owned()));
        inner.series.retain(|k, _| !(k.namespace == namespace && k.contract == name));
    }

    /// Counts one request; says why when it cannot.
    pub fn record(&self, log: &RequestLog) -> Result<Outcome, Dropped> {
        let mut inner = self.lock();
        let result = Self::record_locked(&mut inner, log);
        if let Err(why) = result {
            *inner.dropped.entry(why).or_default() += 1;
        }
        result
    }

    fn record_locked(inner: &mut Inner, log: &RequestLog) -> Result<Outcome, Dropped> {
        let (namespace, name) = super::contract_of_route(&log.route).ok_or(Dropped::NotAContract)?;
        let (target, buckets) =
            inner.targets.get(&(namespace.to_owned(), name.to_owned())).ok_or(Dropped::UnknownContract)?;
        let result = outcome(log, target.max_latency);
        let seconds = log.duration.as_secs_f64();
        let slot = buckets.iter().position(|upper| seconds <= *upper).unwrap_or(buckets.len());
        let width = buckets.len() + 1;
        let key = SeriesKey {
            namespace: namespace.to_owned(),
            contract: name.to_owned(),
            channel: log.channel.clone().unwrap_or_default(),
            region: log.region.clone().unwrap_or_default(),
            fallback: log.fallback,
        };
        let series = inner.series.entry(key).or_insert_with(|| Series { buckets: vec![0; width], ..Series::default() });
        series.outcomes[Outcome::ALL.iter().position(|o| *o == result).unwrap_or(2)] += 1;
        if let Some(b) = series.buckets.get_mut(slot) {
            *b += 1;
        }
        series.sum += seconds;
        series.count += 1;
        Ok(result)
    }

    /// The count of one series and outcome (for tests and the drill's report).
    pub fn requests(&self, namespace: &str, contract: &str, channel: &str, region: &str, outcome: Outcome) -> u64 {
        let inner = self.lock();
        inner
            .series
            .iter()
            .filter(|(k, _)| {
                k.namespace == namespace && k.contract == contract && k.channel == channel && k.region == region
            })
            .map(|(_, s)| s.outcomes[Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(2)])
            .sum()
    }
}

impl Collector for SloMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let inner = self.lock();
        let labels = |k: &SeriesKey| {
            vec![
                ("csp_namespace", k.namespace.clone()),
                ("csp_contract", k.contract.clone()),
                ("csp_channel", k.channel.clone()),
                ("csp_region", k.region.clone()),
                ("csp_fallback", k.fallback.to_string()),
            ]
        };
        {
            let mut family = encoder.encode_descriptor(
                "contract_requests",
                "Requests through a contract's proxies by the channel and region that answered and their outcome against the SLA (ok, slow, failed), from the proxies' access logs",
                None,
                MetricType::Counter,
            )?;
            for (key, series) in &inner.series {
                for (i, outcome) in Outcome::ALL.iter().enumerate() {
                    let mut l = labels(key);
                    l.push(("csp_outcome", outcome.label().to_owned()));
                    ConstCounter::new(series.outcomes[i]).encode(family.encode_family(&l)?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "contract_request_duration_seconds",
                "Duration of the requests through a contract's proxies; the buckets include the contract's sla.maxLatency",
                None,
                MetricType::Histogram,
            )?;
            for (key, series) in &inner.series {
                let Some((_, bounds)) = inner.targets.get(&(key.namespace.clone(), key.contract.clone())) else {
                    continue;
                };
                // Per-bucket counts: the encoder makes them cumulative.
                let buckets: Vec<(f64, u64)> = bounds
                    .iter()
                    .copied()
                    .chain(std::iter::once(f64::INFINITY))
                    .zip(series.buckets.iter().copied())
                    .collect();
                family.encode_family(&labels(key))?.encode_histogram::<NoLabelSet>(
                    series.sum,
                    series.count,
                    &buckets,
                    None,
                )?;
            }
        }
        for (name, help, value) in [
            (
                "contract_sla_objective",
                "The share of a contract's requests that must meet its SLA (spec.sla.objective)",
                (|t: &Target| t.objective) as fn(&Target) -> f64,
            ),
            (
                "contract_sla_max_latency_seconds",
                "A contract's spec.sla.maxLatency",
                (|t: &Target| t.max_latency.as_secs_f64()) as fn(&Target) -> f64,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            let mut keys: Vec<_> = inner.targets.iter().collect();
            keys.sort_by(|a, b| a.0.cmp(b.0));
            for ((namespace, contract), (target, _)) in keys {
                let l = [("csp_namespace", namespace.as_str()), ("csp_contract", contract.as_str())];
                ConstGauge::new(value(target)).encode(family.encode_family(&l)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "access_logs_dropped",
            "Access log entries that could not be attributed to a contract, by reason",
            None,
            MetricType::Counter,
        )?;
        for why in [Dropped::NotAContract, Dropped::UnknownContract] {
            let n = inner.dropped.get(&why).copied().unwrap_or(0);
            ConstCounter::new(n).encode(family.encode_family(&[("reason", why.label())])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    fn log(route: &str, channel: &str, region: &str, fallback: bool, status: u32, ms: u64) -> RequestLog {
        RequestLog {
            route: route.into(),
            channel: (!channel.is_empty()).then(|| channel.into()),
            region: (!region.is_empty()).then(|| region.into()),
            fallback,
            status,
            duration: Duration::from_millis(ms),
            timed_out: false,
        }
    }

    fn target(ms: u64) -> Target {
        Target { max_latency: Duration::from_millis(ms), objective: 0.99 }
    }

    #[test]
    fn outcomes_follow_the_sla() {
        let sla = Duration::from_millis(120);
        assert_eq!(outcome(&log("r", "p", "gz", false, 200, 120), sla), Outcome::Ok, "the deadline itself is met");
        assert_eq!(outcome(&log("r", "p", "gz", false, 404, 5), sla), Outcome::Ok, "a 4xx is an answer");
        assert_eq!(outcome(&log("r", "p", "gz", false, 200, 121), sla), Outcome::Slow);
        assert_eq!(outcome(&log("r", "p", "gz", false, 503, 5), sla), Outcome::Failed);
        assert_eq!(outcome(&log("r", "", "", false, 0, 5), sla), Outcome::Failed, "no answer at all");
        let timeout = RequestLog { timed_out: true, status: 504, ..log("r", "p", "sz", false, 504, 120) };
        assert_eq!(outcome(&timeout, sla), Outcome::Failed);
    }

    #[test]
    fn the_sla_is_a_bucket_boundary() {
        assert!(target(120).buckets().contains(&0.12));
        assert_eq!(target(100).buckets(), LADDER.to_vec(), "a value already on the ladder is not repeated");
        let b = target(1800).buckets();
        assert!(b.windows(2).all(|w| w[0] < w[1]), "sorted: {b:?}");
    }

    #[test]
    fn requests_are_counted_per_channel_and_region_and_exposed_exactly() {
        let m = std::sync::Arc::new(SloMetrics::default());
        m.set_target("payments", "pv", target(120));
        let route = "csp~payments~pv";
        for ms in [10, 50, 120] {
            assert_eq!(m.record(&log(route, "primary", "gz", false, 200, ms)), Ok(Outcome::Ok));
        }
        assert_eq!(m.record(&log(route, "primary", "gz", false, 200, 300)), Ok(Outcome::Slow));
        assert_eq!(m.record(&log(route, "cache", "sz", true, 503, 30)), Ok(Outcome::Failed));
        assert_eq!(m.record(&log("csp~payments~pv~cache", "cache", "sz", true, 200, 5)), Ok(Outcome::Ok));
        assert_eq!(m.record(&log("csp~payments~other", "p", "gz", false, 200, 5)), Err(Dropped::UnknownContract));
        assert_eq!(m.record(&log("elsewhere", "p", "gz", false, 200, 5)), Err(Dropped::NotAContract));
        assert_eq!(m.requests("payments", "pv", "primary", "gz", Outcome::Ok), 3);
        assert_eq!(m.requests("payments", "pv", "cache", "sz", Outcome::Ok), 1);

        let mut registry = Registry::with_prefix("csp");
        registry.register_collector(Box::new(m.clone()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        let line = |needle: &str| text.lines().find(|l| l.starts_with(needle)).map(str::to_owned);
        let base =
            r#"csp_namespace="payments",csp_contract="pv",csp_channel="primary",csp_region="gz",csp_fallback="false""#;
        assert_eq!(
            line(&format!("csp_contract_requests_total{{{base},csp_outcome=\"ok\"}}")).as_deref(),
            Some(&*format!("csp_contract_requests_total{{{base},csp_outcome=\"ok\"}} 3"))
        );
        assert!(text.contains(&format!("csp_contract_requests_total{{{base},csp_outcome=\"slow\"}} 1")), "{text}");
        // The SLA bucket counts exactly the requests within 120ms (10, 50 and 120), not the 300ms one.
        assert!(
            text.contains(&format!("csp_contract_request_duration_seconds_bucket{{le=\"0.12\",{base}}} 3")),
            "{text}"
        );
        assert!(
            text.contains(&format!("csp_contract_request_duration_seconds_bucket{{le=\"+Inf\",{base}}} 4")),
            "{text}"
        );
        assert!(text.contains(&format!("csp_contract_request_duration_seconds_count{{{base}}} 4")), "{text}");
        assert!(
            text.contains(r#"csp_contract_sla_objective{csp_namespace="payments",csp_contract="pv"} 0.99"#),
            "{text}"
        );
        assert!(
            text.contains(r#"csp_contract_sla_max_latency_seconds{csp_namespace="payments",csp_contract="pv"} 0.12"#),
            "{text}"
        );
        assert!(text.contains(r#"csp_access_logs_dropped_total{reason="unknown_contract"} 1"#), "{text}");

        // A new deadline starts the contract's histograms over; forgetting it removes its series.
        m.set_target("payments", "pv", target(200));
        assert_eq!(m.requests("payments", "pv", "primary", "gz", Outcome::Ok), 0);
        assert_eq!(m.record(&log(route, "primary", "gz", false, 200, 150)), Ok(Outcome::Ok));
        m.forget("payments", "pv");
        assert_eq!(m.record(&log(route, "primary", "gz", false, 200, 150)), Err(Dropped::UnknownContract));
    }
}
