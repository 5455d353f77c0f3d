//! What the proxies saw during a ContractDrill's fault, and the verdict.
//!
//! During a drill the contract's routes add the request header `x-csp-drill: <namespace>/<drill>/<run>`,
//! and the proxies' router logs every try of those requests (its upstream log) to the operator: when the
//! try started and ended, whether the endpoint that took it was under the fault, its channel and region,
//! and the status it answered. From those, per proxy:
//! - the fault started for that proxy with the first try that met a faulted endpoint;
//! - it switched over with the first try that started after that and was answered (not 5xx) by an
//!   endpoint that was not under the fault: the next region or channel;
//! - its switchover is the time between the two (both read from the proxy's own clock).
//!
//! The drill's switchover is the slowest proxy's; it passes when every proxy that met the fault switched
//! within `expect.failoverWithin`. Each replica keeps what its proxies logged ([`DrillLog`]); the leader
//! merges the replicas' ([`DrillLog::merge`]) and judges ([`judge`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The request header that marks a drill's requests (and makes the proxies log their tries).
pub const DRILL_HEADER: &str = "x-csp-drill";

/// The successes kept per proxy (the earliest), enough to merge the logs of a proxy that moved between
/// replicas during a drill.
pub const KEPT_SUCCESSES: usize = 64;

/// One try of a drill's request, from a proxy's upstream log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TryLog {
    /// The drill run (`<namespace>/<drill>/<run>`, the header's value).
    pub run: String,
    /// The proxy (its `node.id`).
    pub proxy: String,
    /// When the try started (Unix nanoseconds, the proxy's clock).
    pub start: i64,
    /// When its answer ended (Unix nanoseconds); `start` when it had none.
    pub end: i64,
    /// Whether the endpoint that took it was under the fault.
    pub faulted: bool,
    /// The endpoint's channel.
    pub channel: String,
    /// The endpoint's region.
    pub region: String,
    /// The status it answered; 0 when none (reset, timeout, no connection).
    pub status: u32,
}

impl TryLog {
    fn answered(&self) -> bool {
        self.status > 0 && self.status < 500
    }
}

/// What one proxy logged during a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyLog {
    /// The start of the earliest try that met the fault (Unix ns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_fault: Option<i64>,
    /// `(start, end)` of the earliest answered tries by endpoints not under the fault, sorted by start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub successes: Vec<(i64, i64)>,
    /// Tries logged.
    pub tries: i64,
}

impl ProxyLog {
    fn add_success(&mut self, start: i64, end: i64) {
        let at = self.successes.partition_point(|(s, _)| *s <= start);
        if at < KEPT_SUCCESSES {
            self.successes.insert(at, (start, end));
            self.successes.truncate(KEPT_SUCCESSES);
        }
    }

    fn merge(&mut self, other: &ProxyLog) {
        self.first_fault = match (self.first_fault, other.first_fault) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for (s, e) in &other.successes {
            self.add_success(*s, *e);
        }
        self.tries += other.tries;
    }

    /// The switchover: from the first fault to the end of the first answered try by an endpoint not under
    /// the fault that started after it.
    pub fn switchover(&self) -> Option<Duration> {
        let fault = self.first_fault?;
        let (_, end) = self.successes.iter().find(|(start, _)| *start >= fault)?;
        Some(Duration::from_nanos(u64::try_from(end - fault).unwrap_or(0)))
    }
}

/// Tries by who answered them.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    /// The channel.
    pub channel: String,
    /// The region.
    pub region: String,
    /// Whether under the fault.
    pub faulted: bool,
}

/// What the proxies of one replica (or, merged, of all) logged during one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillLog {
    /// Per proxy.
    #[serde(default)]
    pub proxies: BTreeMap<String, ProxyLog>,
    /// Answered tries by who answered them (keys as `channel/region/faulted`, for JSON).
    #[serde(default)]
    pub served: BTreeMap<String, i64>,
    /// Tries that got no answer or a 5xx.
    #[serde(default)]
    pub failed_tries: i64,
}

fn served_key(s: &Server) -> String {
    format!("{}/{}/{}", s.channel, s.region, s.faulted)
}

fn parse_served_key(k: &str) -> Server {
    let mut parts = k.rsplitn(3, '/');
    let faulted = parts.next() == Some("true");
    let region = parts.next().unwrap_or_default().to_owned();
    let channel = parts.next().unwrap_or_default().to_owned();
    Server { channel, region, faulted }
}

impl DrillLog {
    /// Adds one try.
    pub fn add(&mut self, t: &TryLog) {
        let proxy = self.proxies.entry(t.proxy.clone()).or_default();
        proxy.tries += 1;
        if t.faulted {
            proxy.first_fault = Some(proxy.first_fault.map_or(t.start, |f| f.min(t.start)));
        } else if t.answered() {
            proxy.add_success(t.start, t.end);
        }
        if t.answered() {
            let key = served_key(&Server { channel: t.channel.clone(), region: t.region.clone(), faulted: t.faulted });
            *self.served.entry(key).or_default() += 1;
        } else {
            self.failed_tries += 1;
        }
    }

    /// Merges another replica's log of the same run.
    pub fn merge(&mut self, other: &DrillLog) {
        for (proxy, log) in &other.proxies {
            self.proxies.entry(proxy.clone()).or_default().merge(log);
        }
        for (k, n) in &other.served {
            *self.served.entry(k.clone()).or_default() += n;
        }
        self.failed_tries += other.failed_tries;
    }

    /// Answered tries by who answered them, sorted.
    pub fn served_by(&self) -> Vec<(Server, i64)> {
        let mut out: Vec<(Server, i64)> = self.served.iter().map(|(k, n)| (parse_served_key(k), *n)).collect();
        out.sort();
        out
    }
}

/// The verdict on a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every proxy that met the fault switched within the promise.
    Passed {
        /// The slowest proxy's switchover.
        switchover: Duration,
    },
    /// Some proxy switched later than promised, or not at all.
    Failed {
        /// The slowest switchover, if every proxy that met the fault switched.
        switchover: Option<Duration>,
        /// What went wrong, in words a user acts on.
        message: String,
    },
    /// No request of the contract met the fault: nothing was proven.
    NoTraffic,
}

/// `1.234s` / `912ms`: a switchover as status shows it (millisecond precision).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 {
        let text = format!("{:.3}", d.as_secs_f64());
        format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{ms}ms")
    }
}

/// Judges a run against `promise`.
pub fn judge(log: &DrillLog, promise: Duration) -> Verdict {
    let met: Vec<(&String, &ProxyLog)> = log.proxies.iter().filter(|(_, p)| p.first_fault.is_some()).collect();
    if met.is_empty() {
        return Verdict::NoTraffic;
    }
    let never: Vec<&str> = met.iter().filter(|(_, p)| p.switchover().is_none()).map(|(n, _)| n.as_str()).collect();
    let slowest = met.iter().filter_map(|(n, p)| p.switchover().map(|s| (s, n.as_str()))).max();
    if !never.is_empty() {
        return Verdict::Failed {
            switchover: None,
            message: format!(
                "{} met the fault and no request of {} was answered by another region or channel while it lasted; the promise was {}",
                plural(never.len(), "proxy", "proxies"),
                if never.len() == 1 { format!("it ({})", never[0]) } else { format!("them ({})", never.join(", ")) },
                format_duration(promise)
            ),
        };
    }
    let Some((switchover, proxy)) = slowest else { return Verdict::NoTraffic };
    if switchover <= promise {
        Verdict::Passed { switchover }
    } else {
        Verdict::Failed {
            switchover: Some(switchover),
            message: format!(
                "the switchover took {} on proxy {proxy}, {} longer than the promised {}",
                format_duration(switchover),
                format_duration(switchover - promise),
                format_duration(promise)
            ),
        }
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Whether a fault of a contract can be drilled now, from the contract's spec and status: the fault must
/// hit some ready endpoint, and traffic must have somewhere to go. A region outage needs every other
/// region of `spec.failover.regions` to have ready endpoints of the primary (a drill of gz while sz is
/// empty would prove nothing about sz and could leave hz alone with all the traffic); any other fault
/// needs a ready endpoint outside it. `Err` says what is missing, for the drill's Aborted condition.
pub fn readiness(
    spec: &crds::ChannelContractSpec,
    status: Option<&crds::ChannelContractStatus>,
    fault: &crds::Fault,
) -> Result<(), String> {
    let channels = crds::resolve_channels(spec);
    let names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
    if let Some(channel) = &fault.channel
        && !names.contains(&channel.as_str())
    {
        return Err(format!(
            "channel {channel:?} is not a channel of the contract (its channels: {})",
            names.join(", ")
        ));
    }
    let published = status.map(|s| s.channels.as_slice()).unwrap_or_default();
    let ready = |channel: &str, region: Option<&str>| {
        published
            .iter()
            .any(|c| c.name == channel && c.endpoints > 0 && region.is_none_or(|r| c.regions.iter().any(|x| x == r)))
    };
    let hit = |channel: &str| fault.channel.as_deref().is_none_or(|c| c == channel);
    let faulted: Vec<&str> = names.iter().copied().filter(|c| hit(c) && ready(c, fault.region.as_deref())).collect();
    if faulted.is_empty() {
        return Err(format!(
            "the fault ({}) hits no ready endpoint of the contract: nothing would fail",
            fault.summary()
        ));
    }
    let primary = names.first().copied().unwrap_or(crds::DEFAULT_CHANNEL);
    if let (Some(region), Some(failover)) = (&fault.region, &spec.failover)
        && hit(primary)
    {
        let missing: Vec<&str> =
            failover.regions.iter().map(String::as_str).filter(|r| *r != region && !ready(primary, Some(r))).collect();
        if !missing.is_empty() {
            return Err(format!(
                "the contract's other failover {} [{}] {} no ready endpoints of channel {primary}: a drill of {region} would leave traffic less room than the contract declares",
                if missing.len() == 1 { "region" } else { "regions" },
                missing.join(", "),
                if missing.len() == 1 { "has" } else { "have" }
            ));
        }
    }
    let survivor = published.iter().any(|c| {
        c.endpoints > 0 && (!hit(&c.name) || fault.region.as_ref().is_some_and(|r| c.regions.iter().any(|x| x != r)))
    });
    if !survivor {
        return Err(format!(
            "every ready endpoint of the contract is under the fault ({}): there is no region or channel to fail over to",
            fault.summary()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    fn t(proxy: &str, start_ms: i64, dur_ms: i64, faulted: bool, region: &str, status: u32) -> TryLog {
        TryLog {
            run: "payments/gz-outage/1".into(),
            proxy: proxy.into(),
            start: start_ms * MS,
            end: (start_ms + dur_ms) * MS,
            faulted,
            channel: "primary".into(),
            region: region.into(),
            status,
        }
    }

    #[test]
    fn the_switchover_runs_from_the_first_fault_to_the_first_answer_elsewhere() {
        let mut log = DrillLog::default();
        // Before the fault met this proxy, sz answered a request already: that is not a switchover.
        log.add(&t("gw-1", 900, 2, false, "sz", 200));
        for start in [1000, 1004, 1011, 1091, 1105] {
            log.add(&t("gw-1", start, 1, true, "gz", 503));
        }
        log.add(&t("gw-1", 1122, 3, false, "sz", 200));
        log.add(&t("gw-1", 1130, 3, false, "sz", 200));
        let proxy = &log.proxies["gw-1"];
        assert_eq!(proxy.switchover(), Some(Duration::from_millis(125)));
        assert_eq!(
            judge(&log, Duration::from_millis(1800)),
            Verdict::Passed { switchover: Duration::from_millis(125) }
        );
        assert_eq!(log.failed_tries, 5);
        let served = log.served_by();
        assert_eq!(served, vec![(Server { channel: "primary".into(), region: "sz".into(), faulted: false }, 3)]);
    }

    #[test]
    fn a_slow_or_missing_switchover_fails_and_says_by_how_much() {
        let mut log = DrillLog::default();
        log.add(&t("gw-1", 0, 1, true, "gz", 503));
        log.add(&t("gw-1", 2400, 10, false, "sz", 200));
        log.add(&t("gw-2", 0, 1, true, "gz", 503));
        log.add(&t("gw-2", 100, 10, false, "sz", 200));
        assert_eq!(
            judge(&log, Duration::from_millis(1800)),
            Verdict::Failed {
                switchover: Some(Duration::from_millis(2410)),
                message: "the switchover took 2.41s on proxy gw-1, 610ms longer than the promised 1.8s".into()
            }
        );
        let mut stuck = DrillLog::default();
        stuck.add(&t("gw-3", 0, 1, true, "gz", 503));
        stuck.add(&t("gw-3", 50, 1, true, "gz", 503));
        let Verdict::Failed { switchover: None, message } = judge(&stuck, Duration::from_secs(1)) else {
            panic!("a proxy that never switched fails the drill")
        };
        assert!(message.starts_with("1 proxy met the fault and no request of it (gw-3)"), "{message}");
        assert_eq!(judge(&DrillLog::default(), Duration::from_secs(1)), Verdict::NoTraffic);
    }

    #[test]
    fn replicas_merge_into_the_same_verdict() {
        let tries = [
            t("gw-1", 1000, 1, true, "gz", 503),
            t("gw-1", 1010, 1, true, "gz", 503),
            t("gw-1", 1050, 5, false, "sz", 200),
            t("gw-1", 1060, 5, false, "sz", 200),
        ];
        let mut whole = DrillLog::default();
        tries.iter().for_each(|x| whole.add(x));
        // The proxy moved to another replica between its tries.
        let (mut a, mut b) = (DrillLog::default(), DrillLog::default());
        a.add(&tries[1]);
        a.add(&tries[3]);
        b.add(&tries[0]);
        b.add(&tries[2]);
        let json = serde_json::to_string(&a).expect("serializes");
        let mut merged: DrillLog = serde_json::from_str(&json).expect("parses");
        merged.merge(&b);
        assert_eq!(judge(&merged, Duration::from_secs(1)), judge(&whole, Duration::from_secs(1)));
        assert_eq!(merged.proxies["gw-1"].switchover(), Some(Duration::from_millis(55)));
        assert_eq!(merged.served_by(), whole.served_by());
    }

    #[test]
    fn durations_read_as_status_shows_them() {
        assert_eq!(format_duration(Duration::from_millis(912)), "912ms");
        assert_eq!(format_duration(Duration::from_millis(1800)), "1.8s");
        assert_eq!(format_duration(Duration::from_micros(2_410_400)), "2.41s");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
    }
}

#[cfg(test)]
mod readiness_tests {
    use crds::{ChannelContractSpec, ChannelContractStatus, ChannelStatus, Fault};

    use super::readiness;

    fn spec() -> ChannelContractSpec {
        serde_json::from_value(serde_json::json!({
            "service": "pv", "port": 8080, "sla": {"maxLatency": "120ms"},
            "channels": [{"name": "primary"}, {"name": "cache", "service": "cache"}],
            "failover": {"regions": ["gz", "sz", "hz"]}
        }))
        .expect("spec")
    }

    fn status(primary: &[&str], cache: &[&str]) -> ChannelContractStatus {
        let ch = |name: &str, regions: &[&str]| ChannelStatus {
            name: name.into(),
            endpoints: i32::try_from(regions.len()).unwrap_or(0),
            regions: regions.iter().map(|r| r.to_string()).collect(),
        };
        ChannelContractStatus { channels: vec![ch("primary", primary), ch("cache", cache)], ..Default::default() }
    }

    fn fault(v: serde_json::Value) -> Fault {
        serde_json::from_value(v).expect("fault")
    }

    #[test]
    fn a_region_drill_needs_the_other_regions_ready() {
        let gz = fault(serde_json::json!({"region": "gz", "abort": {}}));
        assert_eq!(readiness(&spec(), Some(&status(&["gz", "sz", "hz"], &["gz"])), &gz), Ok(()));
        let err = readiness(&spec(), Some(&status(&["gz", "hz"], &["gz"])), &gz).expect_err("sz is empty");
        assert!(
            err.starts_with("the contract's other failover region [sz] has no ready endpoints of channel primary"),
            "{err}"
        );
        let err = readiness(&spec(), Some(&status(&["sz", "hz"], &[])), &gz).expect_err("gz has nothing to fail");
        assert!(err.contains("hits no ready endpoint"), "{err}");
        assert!(readiness(&spec(), None, &gz).is_err(), "a contract with no status has nothing ready");
    }

    #[test]
    fn a_channel_drill_needs_another_channel() {
        let primary = fault(serde_json::json!({"channel": "primary", "abort": {}}));
        assert_eq!(readiness(&spec(), Some(&status(&["gz"], &["gz"])), &primary), Ok(()));
        let err = readiness(&spec(), Some(&status(&["gz"], &[])), &primary).expect_err("no other channel");
        assert!(err.contains("no region or channel to fail over to"), "{err}");
        let nope = fault(serde_json::json!({"channel": "static", "abort": {}}));
        let err = readiness(&spec(), Some(&status(&["gz"], &["gz"])), &nope).expect_err("unknown channel");
        assert_eq!(err, "channel \"static\" is not a channel of the contract (its channels: primary, cache)");
    }
}
