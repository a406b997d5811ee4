//! Request and response bodies of the local API, shared by the daemon and the CLI.

use serde::{Deserialize, Serialize};

/// Every error answer: a stable machine code and one human sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentState {
    Starting,
    Ready,
    Degraded,
    Failed,
    Skipped,
    NotImplemented,
    Stopped,
}

impl ComponentState {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentState::Starting => "starting",
            ComponentState::Ready => "ready",
            ComponentState::Degraded => "degraded",
            ComponentState::Failed => "failed",
            ComponentState::Skipped => "skipped",
            ComponentState::NotImplemented => "not-implemented",
            ComponentState::Stopped => "stopped",
        }
    }

    /// Whether the component does its job right now (for health and metrics).
    pub fn is_healthy(self) -> bool {
        matches!(self, ComponentState::Ready | ComponentState::Skipped | ComponentState::NotImplemented)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub state: ComponentState,
    /// RFC 3339, when `state` was entered.
    pub since: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedReload {
    pub at: String,
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The whole error, `file:line: key: message`.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub files: Vec<String>,
    pub loaded_at: String,
    pub reloads_applied: u64,
    pub reloads_rejected: u64,
    /// The last reload that was refused, while the config it tried to replace is still in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_reload: Option<RejectedReload>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    pub pid: u32,
    pub instance: String,
    pub started_at: String,
    pub socket: String,
    /// Set when the daemon runs in a `--root` sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub agent: AgentInfo,
    pub config: ConfigStatus,
    pub components: Vec<ComponentStatus>,
}

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
