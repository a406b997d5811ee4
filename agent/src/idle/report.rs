//! What `GET /v1/idle` and the hold routes answer; the CLI reads the same types.

use super::signal::{Sample, SignalState};
use crate::core::clock::rfc3339;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalReport {
    pub name: String,
    pub state: SignalState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<String>,
    pub reasons: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<String, f64>,
}

impl SignalReport {
    /// A sample as the report shows it: an active signal's last activity is `wall`.
    pub fn of(name: &str, sample: &Sample, wall: std::time::SystemTime) -> Self {
        SignalReport {
            name: name.to_string(),
            state: sample.state,
            last_activity: match sample.state {
                SignalState::Active => Some(rfc3339(sample.last_activity.unwrap_or(wall))),
                _ => sample.last_activity.map(rfc3339),
            },
            reasons: sample.reasons.clone(),
            figures: sample.figures.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdleReport {
    /// `starting` (no sample yet), `active`, `idle`, or `stale` (no sample
    /// for three intervals: not idle).
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<String>,
    /// When the VM turns idle if nothing happens (past while idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_at: Option<String>,
    pub timeout_seconds: u64,
    /// `report`: shadow mode, the verdict is only recorded.
    pub action: String,
    /// Shadow mode: when the VM would have been scaled in (the last turn to idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_have_scaled_in_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sample: Option<String>,
    /// Seconds since `last_sample`, when the answer was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict_age_seconds: Option<f64>,
    /// Older than this, the verdict is `stale`.
    #[serde(default)]
    pub stale_after_seconds: f64,
    /// `last_sample` as a time, and the interval in force: for the age.
    #[serde(skip)]
    pub sampled_at: Option<std::time::SystemTime>,
    #[serde(skip)]
    pub interval: std::time::Duration,
    pub reasons: Vec<String>,
    pub signals: Vec<SignalReport>,
    /// Which signal last moved `idle_since`, and what it saw: a signal that
    /// was active and is quiet again shows no last activity of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_by: Option<ActivityBy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityBy {
    /// A signal's name, or `agent` for the agent's start.
    pub signal: String,
    pub reason: String,
    /// The `idle_since` it set.
    pub at: String,
}

/// Who set `idle_since` (the verdict's last activity): the signal whose
/// sample gives that very moment (active now, or quiet with that last
/// activity); while it does not move, whoever moved it last; at the first
/// sample with no such signal, the agent's start, which counts as activity.
/// A moment the samples cannot explain (a shortened timeout, say) keeps the
/// last answer rather than guess.
pub fn last_activity_by(
    previous: Option<&ActivityBy>,
    idle_since: std::time::SystemTime,
    samples: &[(&'static str, Sample)],
    wall: std::time::SystemTime,
) -> Option<ActivityBy> {
    let at = rfc3339(idle_since);
    if let Some(previous) = previous.filter(|p| p.at == at) {
        return Some(previous.clone());
    }
    let first = |sample: &Sample| sample.reasons.first().cloned().unwrap_or_default();
    // Active first (it is the reason now), then a quiet signal's own last
    // activity, then an unknown (counted as active while it lasts).
    let active = samples.iter().find(|(_, s)| s.state == SignalState::Active && rfc3339(wall) == at);
    let quiet = || {
        samples.iter().find(|(_, s)| s.state == SignalState::Idle && s.last_activity.map(rfc3339).as_ref() == Some(&at))
    };
    let unknown = || samples.iter().find(|(_, s)| s.state == SignalState::Unknown && rfc3339(wall) == at);
    let found = active
        .or_else(quiet)
        .map(|(name, s)| (name, first(s)))
        .or_else(|| unknown().map(|(name, s)| (name, format!("unknown, counted as active: {}", first(s)))));
    match (found, previous) {
        (Some((name, reason)), _) => Some(ActivityBy { signal: name.to_string(), reason, at }),
        (None, None) => Some(ActivityBy {
            signal: "agent".into(),
            reason: "the agent started (its start counts as activity)".into(),
            at,
        }),
        (None, Some(previous)) => Some(previous.clone()),
    }
}

/// `POST /v1/holds`. A misspelt field is refused, not ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// `30m`, `4h`, `1d`.
    pub duration: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn active(reason: &str) -> Sample {
        Sample { state: SignalState::Active, ..Sample::idle(reason) }
    }

    fn quiet_since(reason: &str, last: SystemTime) -> Sample {
        Sample { last_activity: Some(last), ..Sample::idle(reason) }
    }

    #[test]
    fn the_signal_that_moved_last_activity_is_named_after_it_turns_quiet_again() {
        // First sample: nothing explains the moment: the agent's start.
        let quiet = [("sessions", Sample::idle("no one logged in")), ("jupyter", Sample::idle("no kernels"))];
        let first = last_activity_by(None, at(0), &quiet, at(5)).unwrap();
        assert_eq!((first.signal.as_str(), first.at.clone()), ("agent", rfc3339(at(0))));
        // A kernel runs: the verdict's last activity is now, and jupyter says why.
        let busy = [("sessions", Sample::idle("no one logged in")), ("jupyter", active("kernel busy python3 (bob)"))];
        let moved = last_activity_by(Some(&first), at(60), &busy, at(60)).unwrap();
        assert_eq!(
            moved,
            ActivityBy { signal: "jupyter".into(), reason: "kernel busy python3 (bob)".into(), at: rfc3339(at(60)) }
        );
        // Quiet again: jupyter shows no last activity, and the report still names it.
        let later = last_activity_by(Some(&moved), at(60), &quiet, at(600)).unwrap();
        assert_eq!(later, moved);
    }

    #[test]
    fn a_quiet_signal_s_own_last_activity_and_an_unknown_are_named_and_active_wins_a_tie() {
        let samples = [
            ("sessions", quiet_since("alice on pts/0, last input 10m ago", at(0))),
            ("cpu", Sample::idle("1% of user slices")),
        ];
        let by = last_activity_by(None, at(0), &samples, at(600)).unwrap();
        assert_eq!((by.signal.as_str(), by.reason.as_str()), ("sessions", "alice on pts/0, last input 10m ago"));
        let lost = [("holds", Sample::unknown("holds.json unreadable")), ("cpu", active("cpu 80% (bob)"))];
        let by = last_activity_by(Some(&by), at(700), &lost, at(700)).unwrap();
        assert_eq!(by.signal, "cpu", "an active signal is the better answer: {by:?}");
        let only_unknown = [("holds", Sample::unknown("holds.json unreadable"))];
        let by = last_activity_by(Some(&by), at(800), &only_unknown, at(800)).unwrap();
        assert_eq!(
            (by.signal.as_str(), by.reason.as_str()),
            ("holds", "unknown, counted as active: holds.json unreadable")
        );
    }

    #[test]
    fn a_moment_no_sample_explains_keeps_the_last_answer_instead_of_guessing() {
        let before = ActivityBy { signal: "jupyter".into(), reason: "kernel busy".into(), at: rfc3339(at(60)) };
        let quiet = [("sessions", Sample::idle("no one logged in"))];
        assert_eq!(last_activity_by(Some(&before), at(90), &quiet, at(600)), Some(before));
    }
}
