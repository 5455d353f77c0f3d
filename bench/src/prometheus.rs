//! Samples of the Prometheus text format.

use std::collections::BTreeMap;

/// Splits `name{k="v",…} value` into (name, labels, value); None for comments and what does not parse.
pub fn parse_sample(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, labels)) = series.split_once('{') else { return Some((series, BTreeMap::new(), value)) };
    let mut map = BTreeMap::new();
    let mut rest = labels.strip_suffix('}')?;
    while let Some((k, after)) = rest.split_once("=\"") {
        let (v, after) = after.split_once('"')?;
        map.insert(k.trim_start_matches(','), v);
        rest = after;
    }
    Some((name, map, value))
}

/// The sum of the samples of `name` whose labels include `labels`.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(parse_sample)
        .filter(|(n, l, _)| *n == name && labels.iter().all(|(k, v)| l.get(k) == Some(v)))
        .map(|(_, _, v)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_with_and_without_labels() {
        let (name, labels, v) = parse_sample(r#"a_total{verb="GET",resource="pods"} 3"#).expect("parses");
        assert_eq!((name, labels.get("resource").copied(), v), ("a_total", Some("pods"), 3.0));
        assert_eq!(parse_sample("b 2.5").map(|s| s.2), Some(2.5));
        assert!(parse_sample("# HELP b").is_none());
        let text = "c{x=\"1\"} 1\nc{x=\"2\"} 2\nd 7\n";
        assert_eq!(sum(text, "c", &[]), 3.0);
        assert_eq!(sum(text, "c", &[("x", "2")]), 2.0);
    }
}
