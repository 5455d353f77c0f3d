//! The intra-object invariants of the API, in Rust. The CRD states the same rules in CEL so that the API
//! server refuses nonsense even when nothing of ours runs; this module lets `render` (no cluster), the
//! operator and the webhook apply exactly the same judgement to objects they read.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::schema::SELECTOR_OPERATORS;
use crate::{ChannelContractSpec, ContractDrillSpec, ContractPolicySpec, duration};

/// One broken rule: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `spec.retry.perTryTimeout`.
    pub field: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every broken rule of a contract, joined for a condition message or a CLI error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct InvalidSpec(pub Vec<FieldError>);

fn err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError { field: field.to_owned(), message: message.into() }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_label_value(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && s.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A label value that may be empty (selector values, matchLabels values).
fn is_label_value_or_empty(s: &str) -> bool {
    s.is_empty() || is_label_value(s)
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain of at most 253 characters, the name a label
/// value of at most 63.
fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns_label));
    prefix_ok && is_label_value(name)
}

/// Every broken rule of a label selector at `field`: the same rules the CRD states in its schema and CEL
/// (an unknown operator, In/NotIn without values, Exists/DoesNotExist with values, malformed keys and
/// values), so that a selector stored before those rules existed is recognised as unreadable.
pub fn selector(field: &str, selector: &LabelSelector) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        if !is_label_key(key) {
            errors.push(err(&format!("{field}.matchLabels"), format!("{key:?} is not a label key")));
        }
        if !is_label_value_or_empty(value) {
            errors.push(err(&format!("{field}.matchLabels[{key}]"), format!("{value:?} is not a label value")));
        }
    }
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        if !is_label_key(&e.key) {
            errors.push(err(&format!("{at}.key"), format!("{:?} is not a label key", e.key)));
        }
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                errors.push(err(&format!("{at}.values"), format!("operator {} needs at least one value", e.operator)))
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                errors.push(err(&format!("{at}.values"), format!("operator {} takes no values", e.operator)))
            }
            op if !SELECTOR_OPERATORS.contains(&op) => errors.push(err(
                &format!("{at}.operator"),
                format!("{op:?} is not an operator: use one of {}", SELECTOR_OPERATORS.join(", ")),
            )),
            _ => {}
        }
        for v in values.iter().filter(|v| !is_label_value_or_empty(v)) {
            errors.push(err(&format!("{at}.values"), format!("{v:?} is not a label value")));
        }
    }
    errors
}

/// A positive duration, or an error naming the field.
fn positive_duration(field: &str, value: &str, errors: &mut Vec<FieldError>) -> Option<Duration> {
    match duration::parse(value) {
        Ok(d) if d.is_zero() => {
            errors.push(err(field, format!("{field} must be greater than 0")));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(err(field, e.to_string()));
            None
        }
    }
}

fn duplicates<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    let mut dup: Vec<&str> = items.into_iter().filter(|i| !seen.insert(*i)).collect();
    dup.sort_unstable();
    dup.dedup();
    dup
}

/// Checks a ChannelContract spec against every intra-object rule of the API.
pub fn contract(spec: &ChannelContractSpec) -> Result<(), InvalidSpec> {
    let mut errors = Vec::new();
    if !is_dns_label(&spec.service) {
        errors.push(err("spec.service", format!("{:?} is not a valid Service name (a DNS label)", spec.service)));
    }
    if !(1..=65535).contains(&spec.port) {
        errors.push(err("spec.port", format!("{} is not a port (1 to 65535)", spec.port)));
    }
    let max_latency = positive_duration("spec.sla.maxLatency", &spec.sla.max_latency, &mut errors);
    if let Some(objective) = spec.sla.objective
        && !(objective > 0.0 && objective < 1.0)
    {
        errors
            .push(err("spec.sla.objective", "spec.sla.objective must be greater than 0 and less than 1 (e.g. 0.999)"));
    }

    let retry = &spec.retry;
    if !(0..=10).contains(&retry.max_retries) {
        errors.push(err("spec.retry.maxRetries", "spec.retry.maxRetries must be between 0 and 10"));
    }
    if let Some(per_try) = &retry.per_try_timeout {
        let per_try = positive_duration("spec.retry.perTryTimeout", per_try, &mut errors);
        if let (Some(per_try), Some(max)) = (per_try, max_latency)
            && per_try > max
        {
            errors.push(err(
                "spec.retry.perTryTimeout",
                "spec.retry.perTryTimeout must be less than or equal to spec.sla.maxLatency (one try cannot outlast the whole request)",
            ));
        }
    }
    let base = positive_duration("spec.retry.backoff.baseInterval", &retry.backoff.base_interval, &mut errors);
    if let Some(max_interval) = &retry.backoff.max_interval {
        let max = positive_duration("spec.retry.backoff.maxInterval", max_interval, &mut errors);
        if let (Some(base), Some(max)) = (base, max)
            && base > max
        {
            errors.push(err(
                "spec.retry.backoff.baseInterval",
                "spec.retry.backoff.baseInterval must be less than or equal to spec.retry.backoff.maxInterval",
            ));
        }
    }
    if retry.retry_on.is_empty() {
        errors.push(err("spec.retry.retryOn", "spec.retry.retryOn must name at least one condition"));
    }
    if !duplicates(retry.retry_on.iter().map(|r| r.as_str())).is_empty() {
        errors.push(err("spec.retry.retryOn", "spec.retry.retryOn must not repeat a condition"));
    }
    if let Some(budget) = retry.budget_percent
        && !(0.0..=100.0).contains(&budget)
    {
        errors.push(err("spec.retry.budgetPercent", "spec.retry.budgetPercent must be between 0 and 100"));
    }

    let cb = &spec.circuit_breaker;
    if let Some(threshold) = cb.threshold
        && !(threshold > 0.0 && threshold <= 1.0)
    {
        errors.push(err(
            "spec.circuitBreaker.threshold",
            "spec.circuitBreaker.threshold must be greater than 0 and at most 1 (a success rate such as 0.85)",
        ));
    }
    positive_duration("spec.circuitBreaker.interval", &cb.interval, &mut errors);
    positive_duration("spec.circuitBreaker.baseEjectionTime", &cb.base_ejection_time, &mut errors);
    for (field, value) in [
        ("spec.circuitBreaker.minimumRequests", cb.minimum_requests),
        ("spec.circuitBreaker.consecutiveErrors", cb.consecutive_errors),
        ("spec.circuitBreaker.maxConnections", cb.max_connections),
        ("spec.circuitBreaker.maxPendingRequests", cb.max_pending_requests),
        ("spec.circuitBreaker.maxRequests", cb.max_requests),
    ] {
        if value < 1 {
            errors.push(err(field, format!("{field} must be at least 1")));
        }
    }
    if !(0..=100).contains(&cb.max_ejection_percent) {
        errors.push(err(
            "spec.circuitBreaker.maxEjectionPercent",
            "spec.circuitBreaker.maxEjectionPercent must be between 0 and 100",
        ));
    }

    if spec.channels.len() > 16 {
        errors.push(err("spec.channels", "spec.channels may hold at most 16 channels"));
    }
    for (i, c) in spec.channels.iter().enumerate() {
        if !is_dns_label(&c.name) {
            errors.push(err(
                &format!("spec.channels[{i}].name"),
                format!("{:?} is not a valid channel name (a DNS label)", c.name),
            ));
        }
        if let Some(service) = &c.service
            && !is_dns_label(service)
        {
            errors.push(err(
                &format!("spec.channels[{i}].service"),
                format!("{service:?} is not a valid Service name (a DNS label)"),
            ));
        }
        if let Some(port) = c.port
            && !(1..=65535).contains(&port)
        {
            errors.push(err(&format!("spec.channels[{i}].port"), format!("{port} is not a port (1 to 65535)")));
        }
        if let Some(selector) = &c.selector
            && !is_dns_label(selector)
        {
            errors.push(err(
                &format!("spec.channels[{i}].selector"),
                format!("{selector:?} is not a valid selector (a DNS label)"),
            ));
        }
    }
    let dup = duplicates(spec.channels.iter().map(|c| c.name.as_str()));
    if !dup.is_empty() {
        errors.push(err(
            "spec.channels",
            format!("spec.channels[].name must be unique: two channels have the same name ({})", dup.join(", ")),
        ));
    }
    let dup = duplicates(spec.channels.iter().filter_map(|c| c.selector.as_deref()));
    if !dup.is_empty() {
        errors.push(err(
            "spec.channels",
            format!(
                "spec.channels[].selector must be unique: two channels have the same selector ({})",
                dup.join(", ")
            ),
        ));
    }

    if let Some(failover) = &spec.failover {
        for (i, r) in failover.regions.iter().enumerate() {
            if !is_label_value(r) {
                errors.push(err(
                    &format!("spec.failover.regions[{i}]"),
                    format!("{r:?} is not a valid region (a label value)"),
                ));
            }
        }
        let dup = duplicates(failover.regions.iter().map(String::as_str));
        if !dup.is_empty() {
            errors.push(err(
                "spec.failover.regions",
                format!("spec.failover.regions must not repeat a region ({})", dup.join(", ")),
            ));
        }
    }

    if errors.is_empty() { Ok(()) } else { Err(InvalidSpec(errors)) }
}

/// Checks a ContractPolicy spec against every intra-object rule of the API.
pub fn policy(spec: &ContractPolicySpec) -> Result<(), InvalidSpec> {
    let mut errors = Vec::new();
    let kinds: Vec<String> = spec.r#match.kinds.iter().map(|k| format!("{k:?}")).collect();
    if kinds.is_empty() {
        errors.push(err("spec.match.kinds", "spec.match.kinds must name Service, ChannelContract or both"));
    }
    if !duplicates(kinds.iter().map(String::as_str)).is_empty() {
        errors.push(err("spec.match.kinds", "spec.match.kinds must not repeat a kind"));
    }
    for (i, r) in spec.failover.required_regions.iter().enumerate() {
        if !is_label_value(r) {
            errors.push(err(
                &format!("spec.failover.requiredRegions[{i}]"),
                format!("{r:?} is not a valid region (a label value)"),
            ));
        }
    }
    let dup = duplicates(spec.failover.required_regions.iter().map(String::as_str));
    if !dup.is_empty() {
        errors.push(err(
            "spec.failover.requiredRegions",
            format!("spec.failover.requiredRegions must not repeat a region ({})", dup.join(", ")),
        ));
    }
    if let Some(min) = spec.failover.min_regions
        && min < 1
    {
        errors.push(err("spec.failover.minRegions", "spec.failover.minRegions must be at least 1"));
    }
    if let Some(drill) = &spec.drill
        && let Some(window) = positive_duration("spec.drill.requiredWithin", &drill.required_within, &mut errors)
        && window < Duration::from_secs(60)
    {
        errors.push(err("spec.drill.requiredWithin", "spec.drill.requiredWithin must be at least 1m"));
    }
    if spec.enforcement == crate::Enforcement::ValidatingAdmissionPolicy && spec.require_contract {
        errors.push(err(
            "spec.enforcement",
            "spec.enforcement ValidatingAdmissionPolicy cannot enforce spec.requireContract (CEL sees only the object under admission, not the ChannelContracts of its namespace): use enforcement Webhook or Auto",
        ));
    }
    let m = &spec.r#match;
    for (field, sel) in
        [("spec.match.namespaceSelector", &m.namespace_selector), ("spec.match.labelSelector", &m.label_selector)]
    {
        if let Some(sel) = sel {
            errors.extend(selector(field, sel));
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(InvalidSpec(errors)) }
}

/// Every broken rule of a drill: the rules its CRD states in its schema and CEL.
pub fn drill(spec: &ContractDrillSpec) -> Result<(), InvalidSpec> {
    let mut errors = Vec::new();
    if spec.contract.is_empty() || spec.contract.len() > 253 || !spec.contract.split('.').all(is_dns_label) {
        errors.push(err("spec.contract", format!("{:?} is not a valid ChannelContract name", spec.contract)));
    }
    let fault = &spec.fault;
    if fault.region.is_none() && fault.channel.is_none() {
        errors.push(err("spec.fault", "spec.fault needs region, channel or both: say where the outage is"));
    }
    if fault.abort.is_none() && fault.delay.is_none() {
        errors.push(err("spec.fault", "spec.fault needs abort, delay or both: say how the outage fails requests"));
    }
    if let Some(region) = &fault.region
        && !is_label_value(region)
    {
        errors.push(err("spec.fault.region", format!("{region:?} is not a valid region (a label value)")));
    }
    if let Some(channel) = &fault.channel
        && !is_dns_label(channel)
    {
        errors.push(err("spec.fault.channel", format!("{channel:?} is not a valid channel name (a DNS label)")));
    }
    let percent_ok = |p: f64| p > 0.0 && p <= 100.0;
    if let Some(abort) = &fault.abort {
        if !(500..=599).contains(&abort.http_status) {
            errors.push(err("spec.fault.abort.httpStatus", "spec.fault.abort.httpStatus must be between 500 and 599"));
        }
        if !percent_ok(abort.percent) {
            errors.push(err(
                "spec.fault.abort.percent",
                "spec.fault.abort.percent must be greater than 0 and at most 100",
            ));
        }
    }
    if let Some(delay) = &fault.delay {
        positive_duration("spec.fault.delay.duration", &delay.duration, &mut errors);
        if !percent_ok(delay.percent) {
            errors.push(err(
                "spec.fault.delay.percent",
                "spec.fault.delay.percent must be greater than 0 and at most 100",
            ));
        }
    }
    let length = positive_duration("spec.duration", &spec.duration, &mut errors);
    if let Some(length) = length
        && !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&length)
    {
        errors.push(err("spec.duration", "spec.duration must be between 1s and 1h"));
    }
    let within = positive_duration("spec.expect.failoverWithin", &spec.expect.failover_within, &mut errors);
    if let (Some(within), Some(length)) = (within, length)
        && within >= length
    {
        errors.push(err(
            "spec.expect.failoverWithin",
            "spec.expect.failoverWithin must be shorter than spec.duration (the switchover must happen while the fault lasts)",
        ));
    }
    if let Some(trigger) = &spec.trigger {
        if !(trigger.sla_breach_ratio > 0.0 && trigger.sla_breach_ratio <= 1.0) {
            errors.push(err(
                "spec.trigger.slaBreachRatio",
                "spec.trigger.slaBreachRatio must be greater than 0 and at most 1",
            ));
        }
        for (field, value, min, max, words) in [
            ("spec.trigger.for", &trigger.for_, 60, 86_400, "between 1m and 24h"),
            ("spec.trigger.cooldown", &trigger.cooldown, 60, 604_800, "between 1m and 168h"),
        ] {
            if let Some(d) = positive_duration(field, value, &mut errors)
                && !(Duration::from_secs(min)..=Duration::from_secs(max)).contains(&d)
            {
                errors.push(err(field, format!("{field} must be {words}")));
            }
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(InvalidSpec(errors)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Channel, Failover, Sla};

    fn spec() -> ChannelContractSpec {
        serde_json::from_value(serde_json::json!({
            "service": "payment-verify", "port": 8080, "sla": {"maxLatency": "120ms"}
        }))
        .expect("minimal spec deserializes")
    }

    fn fields(spec: &ChannelContractSpec) -> Vec<String> {
        match contract(spec) {
            Ok(()) => vec![],
            Err(InvalidSpec(errors)) => errors.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn a_minimal_contract_is_valid_and_defaulted() {
        let s = spec();
        assert_eq!(contract(&s), Ok(()));
        assert_eq!(s.retry.max_retries, 2);
        assert_eq!(s.circuit_breaker.max_connections, 1024);
    }

    #[test]
    fn per_try_timeout_above_max_latency_is_refused() {
        let mut s = spec();
        s.retry.per_try_timeout = Some("200ms".into());
        assert_eq!(fields(&s), ["spec.retry.perTryTimeout"]);
        s.retry.per_try_timeout = Some("120ms".into());
        assert_eq!(fields(&s), Vec::<String>::new());
    }

    #[test]
    fn base_interval_above_max_interval_is_refused() {
        let mut s = spec();
        s.retry.backoff.base_interval = "1s".into();
        s.retry.backoff.max_interval = Some("500ms".into());
        assert_eq!(fields(&s), ["spec.retry.backoff.baseInterval"]);
    }

    #[test]
    fn threshold_outside_zero_one_is_refused() {
        for (t, ok) in [(0.0, false), (-0.1, false), (1.01, false), (f64::NAN, false), (1.0, true), (0.85, true)] {
            let mut s = spec();
            s.circuit_breaker.threshold = Some(t);
            assert_eq!(fields(&s).is_empty(), ok, "threshold {t}");
        }
    }

    #[test]
    fn duplicate_channel_names_selectors_and_regions_are_refused() {
        let ch = |name: &str, selector: Option<&str>| Channel {
            name: name.into(),
            service: None,
            port: None,
            selector: selector.map(Into::into),
        };
        let mut s = spec();
        s.channels = vec![ch("primary", None), ch("primary", None)];
        assert_eq!(fields(&s), ["spec.channels"]);
        s.channels = vec![ch("primary", Some("a")), ch("cache", Some("a"))];
        assert_eq!(fields(&s), ["spec.channels"]);
        s.channels = vec![ch("primary", None), ch("cache", Some("cache"))];
        s.failover = Some(Failover { regions: vec!["gz".into(), "sz".into(), "gz".into()] });
        assert_eq!(fields(&s), ["spec.failover.regions"]);
    }

    #[test]
    fn malformed_durations_name_their_field() {
        let mut s = spec();
        s.sla = Sla { max_latency: "fast".into(), objective: None };
        assert_eq!(fields(&s), ["spec.sla.maxLatency"]);
        s.sla = Sla { max_latency: "0s".into(), objective: None };
        assert_eq!(fields(&s), ["spec.sla.maxLatency"]);
        s.sla = Sla { max_latency: "120ms".into(), objective: Some(1.0) };
        assert_eq!(fields(&s), ["spec.sla.objective"]);
        s.sla.objective = Some(0.999);
        assert!(contract(&s).is_ok());
    }

    fn drill_spec(v: serde_json::Value) -> ContractDrillSpec {
        serde_json::from_value(v).expect("drill spec")
    }

    fn drill_fields(spec: &ContractDrillSpec) -> Vec<String> {
        drill(spec).err().map(|e| e.0.into_iter().map(|f| f.field).collect()).unwrap_or_default()
    }

    #[test]
    fn a_drill_is_judged_as_its_crd_judges_it() {
        let good = drill_spec(serde_json::json!({
            "contract": "payment-verify", "fault": {"region": "gz", "abort": {}},
            "duration": "60s", "expect": {"failoverWithin": "1800ms"},
            "trigger": {"slaBreachRatio": 0.05}
        }));
        assert!(drill(&good).is_ok(), "{:?}", drill(&good));
        let bad = drill_spec(serde_json::json!({
            "contract": "Payment_Verify", "fault": {"abort": {"httpStatus": 404, "percent": 0}},
            "duration": "2s", "expect": {"failoverWithin": "3s"},
            "trigger": {"slaBreachRatio": 1.5, "for": "10s", "cooldown": "1000h"}
        }));
        assert_eq!(
            drill_fields(&bad),
            [
                "spec.contract",
                "spec.fault",
                "spec.fault.abort.httpStatus",
                "spec.fault.abort.percent",
                "spec.expect.failoverWithin",
                "spec.trigger.slaBreachRatio",
                "spec.trigger.for",
                "spec.trigger.cooldown"
            ]
        );
        let no_how = drill_spec(serde_json::json!({
            "contract": "a", "fault": {"channel": "cache", "delay": {"duration": "0s"}},
            "duration": "2h", "expect": {"failoverWithin": "1s"}
        }));
        assert_eq!(drill_fields(&no_how), ["spec.fault.delay.duration", "spec.duration"]);
    }

    #[test]
    fn selectors_are_judged_as_the_crd_judges_them() {
        let sel = |v: serde_json::Value| -> LabelSelector { serde_json::from_value(v).expect("selector") };
        let good = sel(serde_json::json!({
            "matchLabels": {"tier": "production", "example.com/team": "", "a.b-c/x_y.z": "v-1"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "legacy", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "Exists", "values": []},
            ],
        }));
        assert_eq!(selector("s", &good), []);
        let cases = [
            (
                serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "in", "values": ["a"]}]}),
                "s.matchExpressions[0].operator",
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "In"}]}),
                "s.matchExpressions[0].values",
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": []}]}),
                "s.matchExpressions[0].values",
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "Exists", "values": ["x"]}]}),
                "s.matchExpressions[0].values",
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "bad key", "operator": "Exists"}]}),
                "s.matchExpressions[0].key",
            ),
            (serde_json::json!({"matchLabels": {"-bad": "x"}}), "s.matchLabels"),
            (serde_json::json!({"matchLabels": {"ok": "not ok"}}), "s.matchLabels[ok]"),
        ];
        for (v, field) in cases {
            let found = selector("s", &sel(v.clone()));
            assert_eq!(found.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), [field], "{v}");
        }
        let mut p: ContractPolicySpec = serde_json::from_value(serde_json::json!({})).expect("empty policy");
        p.r#match.namespace_selector =
            Some(sel(serde_json::json!({"matchExpressions": [{"key": "t", "operator": "Equals"}]})));
        let e = policy(&p).expect_err("an unknown operator");
        assert!(
            e.to_string()
                .contains("spec.match.namespaceSelector.matchExpressions[0].operator: \"Equals\" is not an operator"),
            "{e}"
        );
    }

    #[test]
    fn policy_rules() {
        let mut p: ContractPolicySpec = serde_json::from_value(serde_json::json!({})).expect("empty policy");
        assert_eq!(policy(&p), Ok(()));
        p.failover.required_regions = vec!["gz".into(), "gz".into()];
        assert!(policy(&p).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn spec(max_latency_ms: u64, per_try_ms: Option<u64>, base_ms: u64, max_ms: Option<u64>) -> ChannelContractSpec {
        let mut s: ChannelContractSpec = serde_json::from_value(serde_json::json!({
            "service": "svc", "port": 80, "sla": {"maxLatency": format!("{max_latency_ms}ms")}
        }))
        .expect("spec");
        s.retry.per_try_timeout = per_try_ms.map(|ms| format!("{ms}ms"));
        s.retry.backoff.base_interval = format!("{base_ms}ms");
        s.retry.backoff.max_interval = max_ms.map(|ms| format!("{ms}ms"));
        s
    }

    proptest! {
        /// The Rust rules agree with the CEL rules: perTryTimeout <= maxLatency and
        /// baseInterval <= maxInterval decide validity, whatever the values.
        #[test]
        fn durations_decide_validity_exactly_as_the_cel_rules(
            max_latency in 1u64..10_000,
            per_try in proptest::option::of(1u64..10_000),
            base in 1u64..5_000,
            max in proptest::option::of(1u64..5_000),
        ) {
            let valid = per_try.is_none_or(|p| p <= max_latency) && max.is_none_or(|m| base <= m);
            prop_assert_eq!(contract(&spec(max_latency, per_try, base, max)).is_ok(), valid);
        }

        /// Any text that is not a duration is refused with an error naming the field.
        #[test]
        fn malformed_durations_are_refused(text in "[a-z .,-]{1,8}") {
            let mut s = spec(100, None, 25, None);
            s.sla.max_latency = text;
            let err = contract(&s).expect_err("refused");
            prop_assert!(err.0.iter().any(|e| e.field == "spec.sla.maxLatency"));
        }
    }
}
