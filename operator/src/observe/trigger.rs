//! A drill's trigger: "run when the contract's SLA breach ratio stays above `slaBreachRatio` for `for`".
//!
//! The breach ratio is the recording rule `csp:contract_sla_breach:ratio_rate1m` that the chart's
//! PrometheusRule records from the proxies' access logs ([`super::slo`]). The operator asks Prometheus for
//! that series over the window (a range query) and judges it here: the series must cover the whole window
//! (a contract whose traffic began a minute ago has not breached "for 5 minutes", however bad that
//! minute was), have no gap longer than two steps (no traffic is not a breach), and stay strictly above
//! the threshold at every sample: so it fires no earlier than `for` after the breach began.

use std::time::Duration;

/// The recording rule the trigger reads.
pub const BREACH_RULE: &str = "csp:contract_sla_breach:ratio_rate1m";

/// The PromQL of a contract's breach ratio (one series: summed over anything the rule keeps apart).
pub fn query(namespace: &str, contract: &str) -> String {
    format!("max({BREACH_RULE}{{csp_namespace=\"{}\",csp_contract=\"{}\"}})", escape(namespace), escape(contract))
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The step of the range query for a window: about 30 samples, at least 5 s.
pub fn step(window: Duration) -> Duration {
    (window / 30).max(Duration::from_secs(5))
}

/// What the series said.
#[derive(Debug, Clone, PartialEq)]
pub enum Breach {
    /// Above the threshold over the whole window: run the drill.
    Sustained {
        /// The lowest ratio in the window.
        lowest: f64,
    },
    /// Not (or not yet): why, for the drill's condition.
    Not(String),
}

/// Judges `samples` (`(unix seconds, ratio)`, sorted) of the window `[end - window, end]`.
pub fn judge(samples: &[(f64, f64)], end: f64, window: Duration, step: Duration, threshold: f64) -> Breach {
    let start = end - window.as_secs_f64();
    let slack = 2.0 * step.as_secs_f64();
    let Some(first) = samples.first() else {
        return Breach::Not(
            "no breach ratio in Prometheus for the window (no traffic, or the recording rules are not installed)"
                .into(),
        );
    };
    // A range query's samples are at `start + k * step`: a series that existed at the window's start has
    // its first sample there. Any later (beyond clock rounding) and the breach has not lasted `for` yet.
    if first.0 > start + 1.0 {
        return Breach::Not(format!(
            "the breach ratio covers only the last {:.0}s of the {:.0}s window",
            end - first.0,
            window.as_secs_f64()
        ));
    }
    if let Some(w) = samples.windows(2).find(|w| w[1].0 - w[0].0 > slack) {
        return Breach::Not(format!("the breach ratio has a gap of {:.0}s in the window", w[1].0 - w[0].0));
    }
    if let Some(last) = samples.last()
        && end - last.0 > slack
    {
        return Breach::Not(format!("the breach ratio stopped {:.0}s before now", end - last.0));
    }
    let lowest = samples.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min);
    if lowest.is_nan() || samples.iter().any(|(_, v)| v.is_nan()) {
        return Breach::Not("the breach ratio is not a number in the window".into());
    }
    if lowest > threshold {
        Breach::Sustained { lowest }
    } else {
        Breach::Not(format!("the breach ratio fell to {lowest:.4} in the window, not above {threshold}"))
    }
}

/// Reads the samples of a Prometheus range query answer (`/api/v1/query_range`, one series expected;
/// more are merged by taking, per timestamp, the highest value).
pub fn samples(answer: &serde_json::Value) -> Result<Vec<(f64, f64)>, String> {
    if answer["status"] != "success" {
        return Err(format!(
            "Prometheus answered {}: {}",
            answer["errorType"].as_str().unwrap_or("an error"),
            answer["error"].as_str().unwrap_or("(no message)")
        ));
    }
    let result = answer["data"]["result"].as_array().ok_or("Prometheus's answer has no data.result")?;
    let mut points: std::collections::BTreeMap<i64, f64> = std::collections::BTreeMap::new();
    for series in result {
        for value in series["values"].as_array().into_iter().flatten() {
            let ts = value[0].as_f64().ok_or("a sample without a timestamp")?;
            let v: f64 = value[1].as_str().and_then(|s| s.parse().ok()).ok_or("a sample without a value")?;
            let key = (ts * 1000.0).round() as i64;
            let slot = points.entry(key).or_insert(f64::NEG_INFINITY);
            *slot = slot.max(v);
        }
    }
    Ok(points.into_iter().map(|(k, v)| (k as f64 / 1000.0, v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(300);
    const S: Duration = Duration::from_secs(10);

    fn series(from: f64, to: f64, value: f64) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        let mut t = from;
        while t <= to {
            out.push((t, value));
            t += 10.0;
        }
        out
    }

    #[test]
    fn a_breach_must_last_the_whole_window() {
        let end = 10_000.0;
        assert_eq!(judge(&series(end - 300.0, end, 0.2), end, W, S, 0.05), Breach::Sustained { lowest: 0.2 });
        let Breach::Not(why) = judge(&series(end - 60.0, end, 0.9), end, W, S, 0.05) else { panic!("too short") };
        assert!(why.contains("only the last 60s"), "{why}");
        // One step short of the window is short.
        let Breach::Not(why) = judge(&series(end - 290.0, end, 0.9), end, W, S, 0.05) else { panic!("10s short") };
        assert!(why.contains("only the last 290s"), "{why}");
        let mut dip = series(end - 300.0, end, 0.2);
        dip[10].1 = 0.01;
        let Breach::Not(why) = judge(&dip, end, W, S, 0.05) else { panic!("a dip breaks it") };
        assert!(why.contains("fell to 0.0100"), "{why}");
        let mut gap = series(end - 300.0, end, 0.2);
        gap.drain(5..12);
        let Breach::Not(why) = judge(&gap, end, W, S, 0.05) else { panic!("a gap breaks it") };
        assert!(why.contains("gap of 80s"), "{why}");
        assert!(matches!(judge(&[], end, W, S, 0.05), Breach::Not(_)));
        let Breach::Not(why) = judge(&series(end - 300.0, end - 100.0, 0.3), end, W, S, 0.05) else { panic!() };
        assert!(why.contains("stopped 100s before now"), "{why}");
        assert!(
            matches!(judge(&series(end - 300.0, end, 0.05), end, W, S, 0.05), Breach::Not(_)),
            "at the threshold is not above"
        );
    }

    #[test]
    fn prometheus_answers_are_read() {
        let ok = serde_json::json!({"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {}, "values": [[1000.0, "0.1"], [1010.5, "0.2"]]},
            {"metric": {}, "values": [[1000.0, "0.3"]]}
        ]}});
        assert_eq!(samples(&ok), Ok(vec![(1000.0, 0.3), (1010.5, 0.2)]));
        let err = serde_json::json!({"status": "error", "errorType": "bad_data", "error": "parse error"});
        assert_eq!(samples(&err), Err("Prometheus answered bad_data: parse error".into()));
        assert_eq!(
            query("payments", "pay\"ment"),
            "max(csp:contract_sla_breach:ratio_rate1m{csp_namespace=\"payments\",csp_contract=\"pay\\\"ment\"})"
        );
        assert_eq!(step(Duration::from_secs(60)), Duration::from_secs(5));
        assert_eq!(step(Duration::from_secs(300)), Duration::from_secs(10));
    }
}
