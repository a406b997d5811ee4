//! What the share reports: `GET /v1/share`, shared by the daemon and the CLI.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShareState {
    /// No [share] in the config.
    NotConfigured,
    /// A key source or kind that has not landed yet.
    NotImplemented,
    /// Trying to mount (first time, or after the share went away).
    Mounting,
    Mounted,
    /// Was mounted, then a probe failed; remounting with backoff.
    Degraded,
    /// Not mounted; the last attempt failed and another is scheduled.
    Unmounted,
    /// Another filesystem sits at the mount point; the agent will not stack on it.
    Conflict,
    /// Unmounted on request at stop.
    Stopped,
}

impl ShareState {
    pub fn as_str(self) -> &'static str {
        match self {
            ShareState::NotConfigured => "not-configured",
            ShareState::NotImplemented => "not-implemented",
            ShareState::Mounting => "mounting",
            ShareState::Mounted => "mounted",
            ShareState::Degraded => "degraded",
            ShareState::Unmounted => "unmounted",
            ShareState::Conflict => "conflict",
            ShareState::Stopped => "stopped",
        }
    }
}

/// `GET /v1/share`: the share's health, with no secret in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareReport {
    pub state: ShareState,
    pub since: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_point: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
    /// Mount options as passed to mount, credentials shown only as the file path.
    #[serde(default)]
    pub options: Vec<String>,
    /// True when the mount was found in place and adopted rather than made.
    #[serde(default)]
    pub adopted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good_probe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    #[serde(default)]
    pub mounts: u64,
    #[serde(default)]
    pub failed_probes: u64,
}
