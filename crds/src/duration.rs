//! Duration strings as the API uses them: the Go/Kubernetes format (`120ms`, `1.5s`, `2m`), read with
//! kube's `metav1.Duration` parser and limited to what the CRD schema admits (no sign, no `µs`).

use std::time::Duration;

use crate::schema::DURATION_PATTERN;

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    /// Not a duration at all.
    #[error("{value:?} is not a duration; write it like 120ms, 1.5s or 2m")]
    Malformed {
        /// The refused text.
        value: String,
    },
}

/// Parses a duration string of the API.
pub fn parse(value: &str) -> Result<Duration, DurationError> {
    let malformed = || DurationError::Malformed { value: value.to_owned() };
    if value.is_empty() || value.len() > 32 || !matches_pattern(value) {
        return Err(malformed());
    }
    let parsed: kube::core::Duration = value.parse().map_err(|_| malformed())?;
    if parsed.is_negative() {
        return Err(malformed());
    }
    Ok(parsed.into())
}

/// `DURATION_PATTERN` checked by hand: digits, an optional fraction, a unit; repeated.
fn matches_pattern(value: &str) -> bool {
    debug_assert!(DURATION_PATTERN.starts_with('^'));
    let mut rest = value;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if int_len == 0 {
            return false;
        }
        rest = &rest[int_len..];
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            if frac_len == 0 {
                return false;
            }
            rest = &after_dot[frac_len..];
        }
        let unit = ["ns", "us", "ms", "s", "m", "h"].into_iter().find(|u| rest.starts_with(u));
        match unit {
            // "ms" must win over "m": the list puts the two-letter units first.
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

/// [`parse`] for command-line flags (clap's `value_parser`): the error as text.
pub fn parse_flag(value: &str) -> Result<Duration, String> {
    parse(value).map_err(|e| e.to_string())
}

/// Formats a duration as the shortest API string that means exactly it (`1.5s`, `120ms`, `250us`).
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    for (unit, per) in [("s", 1_000_000_000u128), ("ms", 1_000_000), ("us", 1_000)] {
        if nanos.is_multiple_of(per) {
            return format!("{}{unit}", nanos / per);
        }
    }
    format!("{nanos}ns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_kubernetes_writes() {
        assert_eq!(parse("120ms"), Ok(Duration::from_millis(120)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_what_the_schema_refuses() {
        for bad in ["", "120", "ms", "1.s", ".5s", "-1s", "+1s", "1 s", "1sec", "1d", "1µs", "abc", "1.5.5s"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn format_round_trips() {
        for text in ["120ms", "1.5s", "2m", "250us", "7ns"] {
            let d = parse(text).expect("valid");
            assert_eq!(parse(&format(d)), Ok(d), "{text}");
        }
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::from_secs(3)), "3s");
    }
}
