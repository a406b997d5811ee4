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
