//! Status conditions per Kubernetes API conventions, shared by the operator and the webhook's audit.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition of `type_` with status True (`ok`) or False. `lastTransitionTime` is kept from the
/// `previous` condition of the same type when its status is the same, and is `now` when it flips.
pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(second).expect("timestamp"))
    }

    #[test]
    fn last_transition_time_moves_only_when_the_status_flips() {
        let first = condition("Ready", true, "Ready", "ok".into(), Some(1), &[], &at(10));
        assert_eq!(first.last_transition_time, at(10));
        let same = condition("Ready", true, "Other", "still ok".into(), Some(2), std::slice::from_ref(&first), &at(20));
        assert_eq!(same.last_transition_time, at(10));
        let flipped = condition("Ready", false, "Down", "not ok".into(), Some(3), &[same], &at(30));
        assert_eq!((flipped.status.as_str(), flipped.last_transition_time), ("False", at(30)));
    }
}
